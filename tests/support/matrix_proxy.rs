//! A loopback proxy between one Matrix client and Synapse, for the troubles a real network
//! brings. It can:
//! - hold back the client's encrypted to-device messages (which carry its room keys) and
//!   deliver them later, so the bot sees a message before the key that opens it, as over
//!   a slow federation link; the client is told each held message was delivered;
//! - deliver the client's next room message to Synapse and answer the client with a 504,
//!   as a reverse proxy does when the homeserver is slow to reply;
//! - count the events the client sent (room messages and membership changes, what Synapse's
//!   `rc_message` counts) and the 429s Synapse answered it with.
//!
//! Everything else passes through unchanged.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// A to-device send, kept to be delivered later.
struct HeldSend {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    holding: Arc<Mutex<bool>>,
    held: Arc<Mutex<Vec<HeldSend>>>,
    /// Armed: the next room message is delivered and its answer replaced by a 504.
    lose_next_answer: Arc<Mutex<bool>>,
    lost_answers: Arc<Mutex<usize>>,
    /// (events sent, 429 answers to any request)
    counts: Arc<Mutex<(usize, usize)>>,
}

pub struct MatrixProxy {
    pub base_url: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MatrixProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MatrixProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream` (Synapse's base URL).
    pub async fn start(upstream: &str) -> MatrixProxy {
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy client"),
            holding: Arc::new(Mutex::new(false)),
            held: Arc::new(Mutex::new(Vec::new())),
            lose_next_answer: Arc::new(Mutex::new(false)),
            lost_answers: Arc::new(Mutex::new(0)),
            counts: Arc::new(Mutex::new((0, 0))),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MatrixProxy {
            base_url: format!("http://{address}"),
            shared,
            server,
        }
    }

    /// The client's next room message reaches Synapse, and the client gets a 504.
    pub fn lose_next_answer(&self) {
        *self.shared.lose_next_answer.lock().unwrap() = true;
    }

    /// How many answers to room messages were replaced by a 504.
    pub fn lost_answers(&self) -> usize {
        *self.shared.lost_answers.lock().unwrap()
    }

    /// Events the client sent (room messages, edits, joins, leaves), and the 429s
    /// (`M_LIMIT_EXCEEDED`) it was answered with.
    pub fn events_and_429s(&self) -> (usize, usize) {
        *self.shared.counts.lock().unwrap()
    }

    /// From now on the client's encrypted to-device messages are held.
    pub fn hold(&self) {
        *self.shared.holding.lock().unwrap() = true;
    }

    /// How many to-device messages are held.
    pub fn held(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Delivers what was held, in order, and stops holding.
    pub async fn release(&self) {
        *self.shared.holding.lock().unwrap() = false;
        let held = std::mem::take(&mut *self.shared.held.lock().unwrap());
        for send in held {
            let response = send_upstream(
                &self.shared,
                send.method,
                &send.path_and_query,
                send.headers,
                send.body,
            )
            .await;
            assert!(
                response.status().is_success(),
                "Synapse refused a released to-device message: {}",
                response.status()
            );
        }
    }
}

fn is_key_carrier(method: &Method, path: &str) -> bool {
    *method == Method::PUT && path.contains("/sendToDevice/m.room.encrypted/")
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if is_key_carrier(&parts.method, &path_and_query) && *shared.holding.lock().unwrap() {
        shared.held.lock().unwrap().push(HeldSend {
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            body,
        });
        return (StatusCode::OK, "{}").into_response();
    }
    let room_message = parts.method == Method::PUT
        && (path_and_query.contains("/send/m.room.message/")
            || path_and_query.contains("/send/m.room.encrypted/"));
    let path = path_and_query.split('?').next().unwrap_or_default();
    let event = (parts.method == Method::PUT && path.contains("/send/"))
        || (parts.method == Method::POST && (path.ends_with("/join") || path.ends_with("/leave")));
    let response = send_upstream(&shared, parts.method, &path_and_query, parts.headers, body).await;
    {
        let mut counts = shared.counts.lock().unwrap();
        counts.0 += usize::from(event);
        counts.1 += usize::from(response.status() == StatusCode::TOO_MANY_REQUESTS);
    }
    if room_message && std::mem::take(&mut *shared.lose_next_answer.lock().unwrap()) {
        assert!(
            response.status().is_success(),
            "Synapse refused the message"
        );
        *shared.lost_answers.lock().unwrap() += 1;
        return (StatusCode::GATEWAY_TIMEOUT, "upstream timed out").into_response();
    }
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = response.bytes().await.unwrap_or_default();
    // A login answer names the homeserver to use from then on; the client must stay here.
    if path_and_query.contains("/login")
        && let Ok(mut login) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(fields) = login.as_object_mut()
        && fields.remove("well_known").is_some()
    {
        body = Bytes::from(login.to_string());
    }
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn send_upstream(
    shared: &Shared,
    method: Method,
    path_and_query: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> reqwest::Response {
    headers.remove("host");
    headers.remove("content-length");
    shared
        .http
        .request(method, format!("{}{path_and_query}", shared.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("Synapse answers the proxy")
}
