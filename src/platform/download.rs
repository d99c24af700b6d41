//! Fetching a file over HTTP with a size cap: attachments from a platform's CDN, pictures
//! from a model's answer. One path for every adapter, so the rules (https only, a few
//! redirects, a bounded time, never more than the cap in memory) are the same everywhere.

use std::time::Duration;

/// Why a file was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    #[error("not an https URL")]
    NotHttps,
    #[error("larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("{0}")]
    Failed(String),
}

/// The client downloads use: 120 s per file, at most 3 redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_default()
}

/// Fetches `url` (https; plain http only when `allow_plain_http`, i.e. services on
/// loopback in tests), holding at most `max_bytes` in memory.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    allow_plain_http: bool,
    max_bytes: usize,
) -> Result<Vec<u8>, DownloadError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| DownloadError::NotHttps)?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        _ => return Err(DownloadError::NotHttps),
    }
    // Errors without the URL: signed CDN links are credentials of a sort.
    let failed = |err: reqwest::Error| DownloadError::Failed(err.without_url().to_string());
    let mut response = client
        .get(parsed)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?;
    let mut data = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if data.len() + chunk.len() > max_bytes {
            return Err(DownloadError::TooLarge { max: max_bytes });
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}
