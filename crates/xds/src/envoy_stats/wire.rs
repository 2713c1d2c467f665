//! A stats message (`envoy.service.metrics.v3.StreamMetricsMessage`) decoded lazily: its
//! identifier, and of its metric families only those of service clusters (`cluster.service_…`),
//! the only ones [`super::totals`] sums. An Envoy's flush is mostly other stats (builders'
//! clusters, listeners, the server: hundreds of families, histograms of 19 buckets each), and
//! decoding each into a `MetricFamily` with its strings and vectors was most of what a stats
//! stream cost the replica; here every other family is passed over by reading its name in
//! place, with no allocation.
//!
//! Wire-compatible with the generated type: an Envoy, and any client of the generated service,
//! sends what it always did.

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::io::prometheus::client::MetricFamily;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost::{DecodeError, Message};

/// The families kept: everything [`super::totals::parse`] can count starts so.
const KEPT_PREFIX: &[u8] = b"cluster.service_";

/// A stats message with only the families that may count.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StatsMessage {
    /// The Envoy (its first message names it).
    pub(crate) identifier: Option<Identifier>,
    /// The families of service clusters, decoded.
    pub(crate) families: Vec<MetricFamily>,
    /// Families passed over undecoded.
    pub(crate) passed_over: u64,
}

/// Whether a family of this name is kept (decoded).
fn kept(name: &[u8]) -> bool {
    name.starts_with(KEPT_PREFIX)
}

/// A family's name, read in place: its first `name` field (1). `Err` if the family is not
/// well formed as far as it was read.
fn family_name(mut family: &[u8]) -> Result<Option<&[u8]>, ()> {
    while !family.is_empty() {
        let (tag, wire_type) = decode_key(&mut family).map_err(drop)?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut family).map_err(drop)?;
            return family.get(..len as usize).map(Some).ok_or(());
        }
        skip_field(wire_type, tag, &mut family, DecodeContext::default()).map_err(drop)?;
    }
    Ok(None)
}

impl StatsMessage {
    /// Takes one encoded family: decoded if it is a service cluster's, else passed over. One
    /// that is not well formed is decoded whole, so the error is prost's own, as the
    /// generated type's would be.
    fn take(&mut self, family: &[u8]) -> Result<(), DecodeError> {
        match family_name(family) {
            Ok(Some(name)) if !kept(name) => self.passed_over += 1,
            Ok(None) => self.passed_over += 1,
            _ => self.families.push(MetricFamily::decode(family)?),
        }
        Ok(())
    }
}

impl Message for StatsMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(id) = &self.identifier {
            prost::encoding::message::encode(1, id, buf);
        }
        for f in &self.families {
            prost::encoding::message::encode(2, f, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match (tag, wire_type) {
            (1, _) => prost::encoding::message::merge(
                wire_type,
                self.identifier.get_or_insert_with(Identifier::default),
                buf,
                ctx,
            ),
            (2, WireType::LengthDelimited) => {
                // In place when the family's bytes are contiguous, as they are in a request
                // decoded from one buffer.
                let mut rest = buf.chunk();
                let before = rest.len();
                if let Ok(len) = decode_varint(&mut rest)
                    && let Some(family) = rest.get(..len as usize)
                {
                    let taken = before - rest.len() + family.len();
                    let r = self.take(family);
                    buf.advance(taken);
                    return r;
                }
                // Else (split, or short: prost's own error) decoded whole, then kept or not.
                let mut family = MetricFamily::default();
                prost::encoding::message::merge(wire_type, &mut family, buf, ctx)?;
                match kept(family.name.as_deref().unwrap_or_default().as_bytes()) {
                    true => self.families.push(family),
                    false => self.passed_over += 1,
                }
                Ok(())
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.identifier
            .as_ref()
            .map_or(0, |id| prost::encoding::message::encoded_len(1, id))
            + prost::encoding::message::encoded_len_repeated(2, &self.families)
    }

    fn clear(&mut self) {
        *self = StatsMessage::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy_stats::totals::tests::{counter, histogram};
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;

    #[test]
    fn only_service_clusters_families_are_decoded() {
        let kept = vec![
            counter("cluster.service_echo.upstream_rq_2xx", 3.0),
            histogram("cluster.service_echo~v2.upstream_rq_time", &[4.0, 40.0]),
            // Kept, for the strict parse to refuse or ignore.
            counter("cluster.service_Bad.grpc.total", 1.0),
        ];
        let other = [
            counter("cluster.builder_1.upstream_rq_2xx", 1.0),
            histogram("http.main.downstream_rq_time", &[1.0]),
            counter("server.uptime", 7.0),
            counter("cluster.service", 1.0),
        ];
        let mut families = Vec::new();
        for (k, o) in kept.iter().zip(&other) {
            families.extend([o.clone(), k.clone()]);
        }
        families.push(other[3].clone());
        // A family without a name, and one whose name is not its first field.
        families.push(MetricFamily::default());
        let mut late_name = counter("cluster.service_late.upstream_rq_5xx", 2.0);
        late_name.help = Some("help".into());
        families.push(late_name.clone());
        let identifier = Some(Identifier {
            node: Some(Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
        });
        let sent = StreamMetricsMessage {
            identifier: identifier.clone(),
            envoy_metrics: families,
        };
        let bytes = sent.encode_to_vec();
        let got = StatsMessage::decode(bytes.as_slice()).unwrap();
        // The same from a buffer in two pieces, split inside every family in turn.
        for at in 1..bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(
                StatsMessage::decode(a.chain(b)).unwrap(),
                got,
                "split at {at}"
            );
        }
        let mut want = kept.clone();
        want.push(late_name);
        assert_eq!(got.identifier, identifier);
        assert_eq!(got.families, want);
        assert_eq!(got.passed_over, 5);
        // What it keeps encodes as the generated type would.
        let back = StreamMetricsMessage::decode(got.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.envoy_metrics, want);
        assert_eq!(got.encoded_len(), got.encode_to_vec().len());
    }

    #[test]
    fn broken_families_are_errors() {
        let whole = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: vec![counter("cluster.builder_1.upstream_rq_2xx", 1.0)],
        }
        .encode_to_vec();
        // The family's length points past the message; its name's length past the family.
        let mut long = whole.clone();
        long[1] = 0x7f;
        assert!(StatsMessage::decode(long.as_slice()).is_err());
        let mut bad_name = whole.clone();
        bad_name[3] = 0x7f;
        assert!(StatsMessage::decode(bad_name.as_slice()).is_err());
        assert!(StatsMessage::decode(whole.as_slice()).is_ok());
    }
}
