//! The process-wide TLS crypto provider.
//!
//! rustls 0.23 picks its process default provider by itself only when exactly one of its
//! backends is compiled in. reqwest 0.13 (and matrix-sdk through it) enables `aws-lc-rs`; the
//! test tools enable `ring` too (and serenity's rustls backend did, before it moved to native
//! TLS). With both present, code that builds a plain `rustls::ClientConfig::builder()` panics
//! with "no process-level CryptoProvider available" unless a provider was installed first.
//! This keeps that from happening whatever a dependency does next.
//!
//! [`install_crypto_provider`] installs aws-lc-rs (the provider reqwest 0.13 would pick on its
//! own). It is idempotent and cheap, so it is called at the top of every `main` and also by
//! the library's client constructors (`PoeClient::new`, the Matrix session), which keeps
//! tests and other library users safe without remembering to call it.

use std::sync::Once;

/// Installs rustls's aws-lc-rs provider as the process default, once. A provider installed
/// earlier by someone else is left in place.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already the process default: that is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
