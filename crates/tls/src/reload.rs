//! PEM files and their reload: a [`Reloadable`] value is rebuilt from its files whenever one of
//! them changes (checked every second), so certificates rotate without a restart. A change that
//! does not load (half-written file, key that does not match) is logged and the old value kept.

use crate::TlsError;
use concord_telemetry::tasks::Tasks;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Reads every certificate of a PEM file (a chain, or a CA bundle).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(path, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem(path, "no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| pem(path, format!("no usable PRIVATE KEY block: {e}")))
}

/// Reads a CA bundle into a root store (several CAs are allowed, e.g. while rotating the CA).
pub fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| pem(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem(path: &Path, what: String) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what,
    }
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from files, rebuilt when they change.
pub struct Reloadable<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
    generation: AtomicU64,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Builds the value once (an error here is a configuration error: the caller stops).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(&paths);
        let value = build()?;
        Ok(Arc::new(Reloadable {
            what,
            paths,
            build: Box::new(build),
            current: RwLock::new(Arc::new(value)),
            stamps: Mutex::new(stamps),
            generation: AtomicU64::new(0),
        }))
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the value was replaced since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Rebuilds the value if a file changed since the last look; true if it was replaced.
    pub fn check(&self) -> bool {
        let now = stamps(&self.paths);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match (self.build)() {
            Ok(v) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
                self.generation.fetch_add(1, Ordering::Relaxed);
                tracing::info!(what = self.what, "reloaded TLS certificates");
                true
            }
            Err(error) => {
                // Try again next time even if nothing moves: the writer may not be done.
                self.stamps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter_mut()
                    .for_each(|s| *s = None);
                tracing::warn!(what = self.what, %error, "changed TLS files do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_EVERY`] until `tasks` is cancelled.
    pub fn watch(self: &Arc<Self>, tasks: &Tasks) {
        let me = self.clone();
        let shutdown = tasks.token().clone();
        tasks.spawn("tls reload", async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let me = me.clone();
                // File reads and key parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || me.check()).await;
            }
        });
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_on_change_and_keeps_the_old_value_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let r = Reloadable::new("test", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })?;
            text.trim()
                .parse::<u32>()
                .map_err(|e| TlsError::Rustls(e.to_string()))
        })
        .unwrap();
        assert_eq!(*r.current(), 1);
        assert!(!r.check(), "nothing changed");
        std::fs::write(&path, "22").unwrap();
        assert!(r.check());
        assert_eq!(*r.current(), 22);
        assert_eq!(r.generation(), 1);
        std::fs::write(&path, "bad").unwrap();
        assert!(!r.check());
        assert_eq!(*r.current(), 22, "a bad file keeps the old value");
        // A failed load is retried even if the file does not move again.
        std::fs::write(&path, "333").unwrap();
        assert!(r.check());
        assert_eq!(*r.current(), 333);
    }
}
