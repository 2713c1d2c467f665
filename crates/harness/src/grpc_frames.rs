//! gRPC's framing of messages on an HTTP/2 stream, for the harness's own clients and proxies that
//! read or write the bytes themselves: each message is a flag byte (1: compressed), its length
//! (big-endian, four bytes) and the message. One data frame may carry several messages, or part
//! of one.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// A message declared longer than the reader's limit.
#[derive(Debug, thiserror::Error)]
#[error("a gRPC message of {declared} bytes, more than the {limit} accepted")]
pub struct TooLarge {
    /// The length its prefix declares.
    pub declared: usize,
    /// The reader's limit.
    pub limit: usize,
}

/// One message taken whole from a stream's bytes.
pub struct Taken {
    /// Its compressed flag was set.
    pub compressed: bool,
    /// The message.
    pub message: Bytes,
}

/// `m` framed as one uncompressed gRPC message.
pub fn framed(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    m.encode(&mut b).expect("capacity reserved");
    b.freeze()
}

/// Takes the next whole message from the front of `buf`, or `None` until all of it has arrived
/// (room for the rest is reserved then). A declared length over `limit` is an error at once.
pub fn next_message(buf: &mut BytesMut, limit: usize) -> Result<Option<Taken>, TooLarge> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if declared > limit {
        return Err(TooLarge { declared, limit });
    }
    if buf.len() < 5 + declared {
        buf.reserve(5 + declared - buf.len());
        return Ok(None);
    }
    let compressed = buf[0] != 0;
    buf.advance(5);
    Ok(Some(Taken {
        compressed,
        message: buf.split_to(declared).freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    fn request(type_url: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn messages_are_taken_whole_and_in_order() {
        let (a, b) = (framed(&request("a")), framed(&request("b")));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a[..3]);
        assert!(
            next_message(&mut buf, 100).unwrap().is_none(),
            "a prefix in part"
        );
        buf.extend_from_slice(&a[3..]);
        buf.extend_from_slice(&b[..7]);
        let m = next_message(&mut buf, 100)
            .unwrap()
            .expect("the first whole");
        assert!(!m.compressed);
        assert_eq!(DiscoveryRequest::decode(m.message).unwrap().type_url, "a");
        assert!(
            next_message(&mut buf, 100).unwrap().is_none(),
            "the second in part"
        );
        buf.extend_from_slice(&b[7..]);
        let m = next_message(&mut buf, 100)
            .unwrap()
            .expect("the second whole");
        assert_eq!(DiscoveryRequest::decode(m.message).unwrap().type_url, "b");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_compressed_message_is_told_and_a_huge_one_refused() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1, 0][..]);
        assert!(next_message(&mut buf, 100).unwrap().unwrap().compressed);
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(next_message(&mut buf, 100).is_err());
    }
}
