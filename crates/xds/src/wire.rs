//! Discovery responses encoded straight from the snapshot's shared, already-encoded resources
//! into one gRPC frame each ([`Out`], which [`crate::transport`] hands to HTTP/2 as it is). Building a prost message first would copy
//! every resource it carries into an owned `Any` per stream and per push, the whole registry
//! for a state-of-the-world push, only to copy it again into the frame; here each resource's
//! bytes are copied once, into the frame HTTP/2 sends.
//!
//! Field numbers are those of `envoy.service.discovery.v3`; the tests check the output against
//! prost's encoding of the same message.

use crate::snapshot::Named;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use std::sync::Arc;
use tonic::Status;

/// What a stream's driver hands its response body: a message already framed (gRPC prefix and
/// all), or the status that ends the stream (boxed: the channel's slots are allocated per
/// stream, at the item's size).
pub type Out = Result<Bytes, Box<Status>>;

/// The fields of a response besides its resources.
pub struct Head<'a> {
    /// `version_info` (state of the world) or `system_version_info` (delta).
    pub version: &'a str,
    /// The resources' type URL.
    pub type_url: &'a str,
    /// The response's nonce.
    pub nonce: &'a str,
    /// `control_plane.identifier`.
    pub identifier: &'a str,
}

/// A state-of-the-world `DiscoveryResponse` carrying `resources`.
pub fn sotw(head: &Head<'_>, resources: &[Any]) -> Out {
    // version_info 1, resources 2, type_url 4, nonce 5, control_plane 6.
    let len = str_len(1, head.version)
        + resources
            .iter()
            .map(|a| field_len(2, a.encoded_len()))
            .sum::<usize>()
        + str_len(4, head.type_url)
        + str_len(5, head.nonce)
        + field_len(6, str_len(1, head.identifier));
    let mut buf = frame_buf(len)?;
    put_str(1, head.version, &mut buf);
    for a in resources {
        put_field(2, a.encoded_len(), &mut buf);
        a.encode_raw(&mut buf);
    }
    put_str(4, head.type_url, &mut buf);
    put_str(5, head.nonce, &mut buf);
    put_field(6, str_len(1, head.identifier), &mut buf);
    put_str(1, head.identifier, &mut buf);
    debug_assert_eq!(buf.len(), 5 + len);
    Ok(buf.freeze())
}

/// A `DeltaDiscoveryResponse` carrying `updates` and naming `removed`.
pub fn delta(head: &Head<'_>, updates: &[Arc<Named>], removed: &[String]) -> Out {
    // system_version_info 1, resources 2, type_url 4, nonce 5, removed_resources 6,
    // control_plane 7.
    let len = str_len(1, head.version)
        + updates
            .iter()
            .map(|n| field_len(2, resource_len(n)))
            .sum::<usize>()
        + str_len(4, head.type_url)
        + str_len(5, head.nonce)
        + removed.iter().map(|r| field_len(6, r.len())).sum::<usize>()
        + field_len(7, str_len(1, head.identifier));
    let mut buf = frame_buf(len)?;
    put_str(1, head.version, &mut buf);
    for n in updates {
        // Resource: version 1, resource 2, name 3.
        put_field(2, resource_len(n), &mut buf);
        put_str(1, &n.version, &mut buf);
        put_field(2, n.resource.encoded_len(), &mut buf);
        n.resource.encode_raw(&mut buf);
        put_str(3, &n.name, &mut buf);
    }
    put_str(4, head.type_url, &mut buf);
    put_str(5, head.nonce, &mut buf);
    for r in removed {
        // Repeated strings are sent even when empty.
        put_field(6, r.len(), &mut buf);
        buf.put_slice(r.as_bytes());
    }
    put_field(7, str_len(1, head.identifier), &mut buf);
    put_str(1, head.identifier, &mut buf);
    debug_assert_eq!(buf.len(), 5 + len);
    Ok(buf.freeze())
}

/// The encoded length of a delta `Resource`.
fn resource_len(n: &Named) -> usize {
    str_len(1, &n.version) + field_len(2, n.resource.encoded_len()) + str_len(3, &n.name)
}

/// A buffer of exactly the frame's size, with the gRPC prefix (not compressed, length) written.
fn frame_buf(len: usize) -> Result<BytesMut, Box<Status>> {
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "a response of {len} bytes is larger than a gRPC message can be"
        ))
    })?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    Ok(buf)
}

/// The length of a length-delimited field of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The length of a singular string field (left out when empty, as proto3 does).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

fn put_field(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_str(tag: u32, s: &str, buf: &mut BytesMut) {
    if !s.is_empty() {
        put_field(tag, s.len(), buf);
        buf.put_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.into(),
            value: value.to_vec(),
        }
    }

    fn named(name: &str, version: &str, value: &[u8]) -> Arc<Named> {
        Arc::new(Named {
            name: name.into(),
            version: version.into(),
            resource: any("type.googleapis.com/x", value),
        })
    }

    /// The frame's message, checked to fill the frame exactly.
    fn message<M: Message + Default>(out: Out) -> M {
        let f = out.unwrap();
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes(f[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 5, "length prefix");
        M::decode(&f[5..]).unwrap()
    }

    #[test]
    fn sotw_is_what_prost_would_send() {
        let big = vec![7u8; 300];
        for (resources, version, nonce, id) in [
            (vec![], "", "", ""),
            (
                vec![any("t/a", b"\x08\x01"), any("t/b", &big)],
                "12",
                "3",
                "node-1",
            ),
            (vec![any("", b"")], "1", "", "x"),
        ] {
            let head = Head {
                version,
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                nonce,
                identifier: id,
            };
            let want = DiscoveryResponse {
                version_info: version.into(),
                resources: resources.clone(),
                type_url: head.type_url.into(),
                nonce: nonce.into(),
                control_plane: Some(ControlPlane {
                    identifier: id.into(),
                }),
                ..Default::default()
            };
            let got: DiscoveryResponse = message(sotw(&head, &resources));
            assert_eq!(got, want);
            assert_eq!(
                sotw(&head, &resources).unwrap().len(),
                5 + want.encoded_len()
            );
        }
    }

    #[test]
    fn delta_is_what_prost_would_send() {
        let big = vec![1u8; 200];
        for (updates, removed) in [
            (vec![], vec![]),
            (
                vec![
                    named("a", "v1", b"\x08\x01"),
                    named("b.example", "ff00", &big),
                ],
                vec!["gone".to_string(), String::new()],
            ),
            (vec![named("", "", b"")], vec![]),
        ] {
            let head = Head {
                version: "40",
                type_url: "type.googleapis.com/envoy.config.listener.v3.Listener",
                nonce: "9",
                identifier: "concord-2",
            };
            let want = DeltaDiscoveryResponse {
                system_version_info: "40".into(),
                resources: updates
                    .iter()
                    .map(|n| Resource {
                        name: n.name.clone(),
                        version: n.version.clone(),
                        resource: Some(n.resource.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: head.type_url.into(),
                removed_resources: removed.clone(),
                nonce: "9".into(),
                control_plane: Some(ControlPlane {
                    identifier: "concord-2".into(),
                }),
                ..Default::default()
            };
            let got: DeltaDiscoveryResponse = message(delta(&head, &updates, &removed));
            assert_eq!(got, want);
            assert_eq!(
                delta(&head, &updates, &removed).unwrap().len(),
                5 + want.encoded_len()
            );
        }
    }
}
