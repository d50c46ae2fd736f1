//! Logging setup for the CNI binary: `tracing` to stderr or a log file,
//! never stdout (stdout carries the CNI protocol).

use std::sync::OnceLock;

use crate::config::Config;

static INIT: OnceLock<()> = OnceLock::new();

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(cfg: &Config) {
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false);
        let file = cfg.log_file.as_ref().and_then(|p| {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    // Said once per exec on stderr (the runtime keeps it),
                    // never silently: the operator reads the file expecting
                    // everything to be there.
                    eprintln!(
                        "tenet: cannot open log file {}: {e}; logging to stderr",
                        p.display()
                    );
                    None
                }
            }
        });
        let _ = match file {
            Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    });
}
