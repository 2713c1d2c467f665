//! The store against openraft's conformance suite, plus reopen and identity checks.

use super::*;
use crate::TypeConfig;
use concord_registry::{Batch, Command, Source};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, Vote,
};
use tempfile::TempDir;

fn identity(node_id: NodeId) -> Identity {
    Identity {
        cluster: "test".into(),
        node_id,
        format: 0,
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path(), &identity(0)).await.expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("storage conformance suite");
}

fn entry(index: u64, id: &str) -> Entry<TypeConfig> {
    let b = concord_registry::Builder {
        id: id.into(),
        addr: "127.0.0.1:9000".parse().unwrap(),
        sni: format!("{id}.example.com"),
        region: String::new(),
        labels: Default::default(),
        source: Source::Api,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::new(
            Source::Api,
            Batch {
                upserts: vec![b],
                removes: vec![],
            },
        )),
    }
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries = vec![entry(1, "a"), entry(2, "b")];
        sm.apply(entries.clone()).await.unwrap();
        // Append through the blocking path used in production: flush, then callback.
        let tree_log = log.clone();
        let mut batch = sled::Batch::default();
        for e in &entries {
            batch.insert(&e.log_id.index.to_be_bytes(), encode(e));
        }
        tree_log.log.apply_batch(batch).unwrap();
        tree_log.db.flush().await.unwrap();
        assert_eq!(sm.registry().borrow().revision(), 2);
    }
    let (mut log, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.try_get_log_entries(0..10).await.unwrap().len(), 2);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    let reg = sm.registry().borrow().clone();
    assert_eq!(reg.len(), 2);
    assert_eq!(reg.revision(), 2);
}

#[tokio::test]
async fn refuses_data_dir_of_another_node_or_cluster() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path(), &identity(1)).await.unwrap());
    let err = open(dir.path(), &identity(2)).await.err().unwrap();
    assert!(
        matches!(
            err,
            OpenError::NodeIdMismatch {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    let mut other = identity(1);
    other.cluster = "elsewhere".into();
    let err = open(dir.path(), &other).await.err().unwrap();
    assert!(matches!(err, OpenError::ForeignCluster { .. }), "{err}");
    assert!(
        err.to_string().contains("belongs to cluster \"test\""),
        "{err}"
    );
}

#[tokio::test]
async fn snapshot_restores_a_fresh_state_machine() {
    let src = TempDir::new().unwrap();
    let (_, mut sm) = open(src.path(), &identity(1)).await.unwrap();
    sm.apply(vec![entry(1, "a"), entry(2, "b")]).await.unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let dst = TempDir::new().unwrap();
    {
        let (_, mut other) = open(dst.path(), &identity(2)).await.unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(other.registry().borrow().len(), 2);
    }
    // And the installed state is what a restart finds.
    let (_, mut other) = open(dst.path(), &identity(2)).await.unwrap();
    assert_eq!(other.registry().borrow().revision(), 2);
    let (applied, _) = other.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    assert!(other.get_current_snapshot().await.unwrap().is_some());
}

#[tokio::test]
async fn a_snapshot_that_does_not_make_a_registry_is_refused_before_it_is_stored() {
    let dir = TempDir::new().unwrap();
    let (_, mut sm) = open(dir.path(), &identity(2)).await.unwrap();
    sm.apply(vec![entry(1, "a")]).await.unwrap();
    let good = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut b = match &entry(1, "x").payload {
        EntryPayload::Normal(cmd) => cmd.batch.upserts[0].clone(),
        _ => unreachable!(),
    };
    // Two builders with one SNI name, and one id twice: decodes, but is no registry.
    b.sni = "same.example.com".into();
    let mut c = b.clone();
    c.id = "y".into();
    let mut d = b.clone();
    d.sni = "other.example.com".into();
    for builders in [vec![b.clone(), c], vec![b, d]] {
        let data = serde_json::to_vec(&serde_json::json!({ "revision": 5, "builders": builders }))
            .unwrap();
        let mut meta = good.meta.clone();
        meta.snapshot_id = "bad".into();
        let err = sm
            .install_snapshot(&meta, Box::new(std::io::Cursor::new(data)))
            .await;
        assert!(err.is_err(), "{builders:?}");
        // Nothing was stored or replaced.
        assert!(
            sm.get_current_snapshot()
                .await
                .unwrap()
                .is_none_or(|s| s.meta.snapshot_id != "bad")
        );
        assert_eq!(sm.registry().borrow().len(), 1);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(512))]

    /// Log entries and snapshots read back from disk decode without panicking whatever the bytes:
    /// arbitrary ones, and real encodings cut short or with a byte changed.
    #[test]
    fn stored_bytes_decode_without_panicking(
        raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        at in proptest::prelude::any::<proptest::sample::Index>(),
        damage in 0u8..3,
    ) {
        let _ = decode::<Entry<TypeConfig>>(&raw);
        let _ = decode::<super::sm::SnapshotData>(&raw);
        let mut real = encode(&entry(7, "b1"));
        match damage {
            0 => real.truncate(at.index(real.len() + 1)),
            1 => { let k = at.index(real.len()); real[k] ^= raw.first().copied().unwrap_or(1) | 1; }
            _ => real.extend_from_slice(&raw),
        }
        if let Ok(e) = decode::<Entry<TypeConfig>>(&real)
            && let EntryPayload::Normal(cmd) = e.payload
        {
            let mut r = concord_registry::Registry::new();
            let _ = r.apply(e.log_id.index, &cmd);
        }
    }
}

/// A build reads the state at one index and stores its snapshot later; an install of a newer
/// snapshot in between must survive the build (issue 16, item 4), or the stored snapshot is older
/// than the log openraft purges up to the installed one.
#[tokio::test]
async fn a_snapshot_build_never_replaces_a_newer_installed_snapshot() {
    let src = TempDir::new().unwrap();
    let (_, mut leader) = open(src.path(), &identity(1)).await.unwrap();
    leader
        .apply(
            (1..=4)
                .map(|i| entry(i, &format!("b{i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(newer.meta.last_log_id.map(|l| l.index), Some(4));

    let dir = TempDir::new().unwrap();
    let (_, mut sm) = open(dir.path(), &identity(2)).await.unwrap();
    sm.apply(vec![entry(1, "b1"), entry(2, "b2")])
        .await
        .unwrap();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel();
    sm.pause_next_build(super::sm::BuildPause {
        read: read_tx,
        resume: resume_rx,
    });
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    // The build has read the state at index 2; a snapshot at index 4 is installed meanwhile.
    tokio::time::timeout(std::time::Duration::from_secs(10), read_rx)
        .await
        .expect("the build reads the state")
        .unwrap();
    sm.install_snapshot(&newer.meta, newer.snapshot)
        .await
        .unwrap();
    resume_tx.send(()).unwrap();
    let built = build.await.unwrap().unwrap();

    let stored = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(
        stored.meta.last_log_id.map(|l| l.index),
        Some(4),
        "the installed snapshot at index 4 was replaced by the build's at index {:?}",
        stored.meta.last_log_id.map(|l| l.index)
    );
    assert_eq!(stored.meta.snapshot_id, newer.meta.snapshot_id);
    // What the build hands openraft is no older than what is stored.
    assert!(built.meta.last_log_id >= stored.meta.last_log_id);
    // And a restart restores the newer state from it.
    drop(sm);
    let (_, mut sm) = open(dir.path(), &identity(2)).await.unwrap();
    assert_eq!(sm.registry().borrow().len(), 4);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(4));
}

fn with_request(mut e: Entry<TypeConfig>, id: &str) -> Entry<TypeConfig> {
    if let EntryPayload::Normal(cmd) = &mut e.payload {
        cmd.request_id = Some(id.into());
    }
    e
}

/// A replica that restarts, or installs a snapshot, answers a retried request as the replica
/// that first applied it: the remembered request ids are stored with the state and in snapshots.
#[tokio::test]
async fn request_ids_survive_reopen_and_snapshots() {
    let dir = TempDir::new().unwrap();
    let first = {
        let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
        sm.apply(vec![with_request(entry(1, "a"), "req-1")])
            .await
            .unwrap()
    };
    let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
    let retry = sm
        .apply(vec![with_request(entry(2, "b"), "req-1")])
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert!(sm.registry().borrow().get("b").is_none(), "applied twice");
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let dst = TempDir::new().unwrap();
    let (_, mut other) = open(dst.path(), &identity(2)).await.unwrap();
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let retry = other
        .apply(vec![with_request(entry(3, "c"), "req-1")])
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert!(
        other.registry().borrow().get("c").is_none(),
        "applied twice"
    );
}

fn normal(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn shop() -> concord_registry::services::Desired {
    serde_json::from_value(serde_json::json!({
        "services": {"echo": {"protocol": "grpc"}},
        "route_tables": {"main": {"virtual_hosts": [{"name": "echo", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "service": "echo"}]}]}}
    }))
    .unwrap()
}

/// The cluster's entry format and the services' desired state are stored with the state, and
/// travel in snapshots.
#[tokio::test]
async fn format_and_desired_state_survive_reopen_and_snapshots() {
    let dir = TempDir::new().unwrap();
    {
        let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
        let register = |id: &str| concord_registry::services::EndpointChange::Register {
            service: "echo".into(),
            id: id.into(),
            addr: "127.0.0.1:50051".parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            ttl: Some(concord_registry::services::Duration::from_secs(10)),
        };
        sm.apply(vec![
            normal(1, Command::raise_format(2)),
            normal(2, Command::apply_services(shop())),
            normal(3, Command::endpoints(vec![register("e1"), register("e2")])),
            normal(
                4,
                Command::endpoints(vec![
                    concord_registry::services::EndpointChange::Deregister {
                        service: "echo".into(),
                        id: "e1".into(),
                    },
                ]),
            ),
            normal(
                5,
                Command::certificates(vec![concord_registry::services::CertificateChange::Put {
                    name: "wild".into(),
                    certificate: concord_registry::services::Certificate {
                        cert_pem: "C".into(),
                        key_pem: concord_registry::services::Secret::new("K".into()),
                        names: vec![],
                        not_after: 1,
                    },
                }]),
            ),
        ])
        .await
        .unwrap();
        let reg = sm.registry().borrow().clone();
        assert_eq!((reg.format(), reg.revision()), (2, 5));
        sm.flush().await.unwrap();
    }
    let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
    let reg = sm.registry().borrow().clone();
    assert_eq!((reg.format(), reg.revision()), (2, 5));
    assert_eq!(**reg.desired(), shop());
    let ids: Vec<&str> = reg.endpoints_of("echo").map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e2"]);
    assert_eq!(reg.certificates().len(), 1);
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let dst = TempDir::new().unwrap();
    let (_, mut other) = open(dst.path(), &identity(2)).await.unwrap();
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let reg = other.registry().borrow().clone();
    assert_eq!(reg.format(), 2);
    assert_eq!(**reg.desired(), shop());
    assert_eq!(reg.endpoint("echo", "e2").map(|e| e.registered_at), Some(3));
    assert_eq!(reg.certificates()["wild"].key_pem.expose(), "K");
}

/// An entry of a format this build does not know stops the state machine before it, instead
/// of being applied in part; what came before it is applied.
#[tokio::test]
async fn an_entry_of_an_unknown_format_is_not_applied() {
    let dir = TempDir::new().unwrap();
    let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
    let mut future = Command::raise_format(concord_registry::FORMAT + 1);
    future.batch.removes.push("a".into());
    let err = sm
        .apply(vec![entry(1, "a"), normal(2, future)])
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("format"), "{err}");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    let reg = sm.registry().borrow().clone();
    assert_eq!(
        (reg.len(), reg.format()),
        (1, concord_registry::FORMAT_BUILDERS)
    );
}

/// A desired state without a service drops its registered endpoints from the tree too: a
/// restart does not bring them back.
#[tokio::test]
async fn endpoints_of_a_removed_service_are_gone_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (_, mut sm) = open(dir.path(), &identity(1)).await.unwrap();
        let register = concord_registry::services::EndpointChange::Register {
            service: "echo".into(),
            id: "e1".into(),
            addr: "127.0.0.1:50051".parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            ttl: None,
        };
        sm.apply(vec![
            normal(1, Command::raise_format(2)),
            normal(2, Command::apply_services(shop())),
            normal(3, Command::endpoints(vec![register])),
            normal(4, Command::apply_services(Default::default())),
        ])
        .await
        .unwrap();
        assert!(sm.registry().borrow().endpoint("echo", "e1").is_none());
        sm.flush().await.unwrap();
    }
    let (_, sm) = open(dir.path(), &identity(1)).await.unwrap();
    assert_eq!(sm.registry().borrow().all_endpoints().count(), 0);
}
