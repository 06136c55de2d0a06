//! Reports of what procq could not deliver, made where someone will see them.
//!
//! A report goes to `tracing` as a warning; when no subscriber would record that warning
//! (none installed, or one that filters it out), the same line goes to stderr, so a lost
//! item is never reported to nobody.

/// Reports `message` (one line, no trailing period).
pub(crate) fn warn(items: usize, message: &str) {
    if tracing::enabled!(target: "procq", tracing::Level::WARN) {
        tracing::warn!(target: "procq", items, "{message}");
    } else {
        // Not eprintln!: it panics when stderr is gone, and this runs in destructors.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "procq: warning: {message}");
    }
}
