//! File upload: a file becomes an [`Attachment`] that a native request can carry.
//!
//! Poe's upload endpoint takes the raw key (no `Bearer`) and either a multipart `file` part
//! or a `download_url` form field for files Poe should fetch itself.

use serde::Deserialize;

use super::PoeClient;
use super::error::PoeError;
use super::native::Attachment;
use super::request::{FileSource, InputFile};

#[derive(Debug, Deserialize)]
struct UploadResponse {
    attachment_url: String,
    mime_type: String,
}

impl PoeClient {
    /// Uploads `file` and returns the attachment to put on a message.
    pub async fn upload(&self, file: &InputFile) -> Result<Attachment, PoeError> {
        let url = self.config().upload_url.clone();
        self.with_retries("upload", || async {
            // Poe's upload endpoint takes the raw key; mark it sensitive like bearer_auth does.
            let mut authorization = reqwest::header::HeaderValue::from_str(self.key().expose())
                .map_err(|_| PoeError::InvalidKey { status: 0 })?;
            authorization.set_sensitive(true);
            let request = self
                .http()
                .post(&url)
                .header(reqwest::header::AUTHORIZATION, authorization);
            let request = match &file.source {
                FileSource::Bytes(bytes) => {
                    let part = reqwest::multipart::Part::bytes(bytes.to_vec())
                        .file_name(file.name.clone())
                        .mime_str(&file.content_type)
                        .map_err(|_| PoeError::BadRequest {
                            detail: format!("`{}` is not a valid content type", file.content_type),
                        })?;
                    request.multipart(reqwest::multipart::Form::new().part("file", part))
                }
                FileSource::Url(download_url) => request.form(&[
                    ("download_url", download_url.as_str()),
                    ("download_filename", file.name.as_str()),
                ]),
            };
            let body = self.send_simple(request, 1024 * 1024).await?;
            let uploaded: UploadResponse = serde_json::from_slice(&body).map_err(|err| {
                PoeError::protocol(format!("unexpected upload answer: {err}"), false)
            })?;
            Ok(Attachment {
                url: uploaded.attachment_url,
                content_type: uploaded.mime_type,
                name: file.name.clone(),
            })
        })
        .await
    }
}
