//! A fake api.poe.com on loopback, faithful enough that the official `fastapi-poe` and
//! `openai` Python clients accept it (the tests prove it), for tests and benchmarks.
//!
//! It serves both chat transports, the model list, the usage endpoints and file upload.
//! What each model answers is scripted with [`Scenario`]s; every request is recorded;
//! balance, model list and points history are under the test's control. Each completed
//! answer is charged like Poe would: a history entry and a lower balance.

mod render;
mod scenario;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use render::Frame;
pub use scenario::Scenario;
use scenario::Step;

/// Where the fake serves file uploads (the same path as Poe's upload host).
pub const UPLOAD_PATH: &str = "/poe_api/file_upload_3RD_PARTY_POST";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The model named by the path or the body.
    pub model: Option<String>,
    pub authorization: Option<String>,
    /// The JSON body; for uploads, a summary of the form.
    pub body: Value,
    pub received_at: std::time::Instant,
}

/// A file uploaded to the fake.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub download_url: Option<String>,
    pub url: String,
}

struct Shared {
    key: String,
    base_url: String,
    state: Mutex<FakeState>,
    timing: Mutex<Option<Vec<SentText>>>,
}

/// When answer text left the fake: `chars` characters of `model`'s answer were sent by
/// then. Recorded only after [`FakePoe::record_timing`].
#[derive(Debug, Clone)]
pub struct SentText {
    pub model: String,
    pub at: std::time::Instant,
    pub chars: usize,
}

struct FakeState {
    scripts: HashMap<String, Scenario>,
    counters: HashMap<String, usize>,
    requests: Vec<RecordedRequest>,
    balance: i64,
    /// Oldest first; served newest first.
    history: Vec<Value>,
    models: Value,
    uploads: Vec<UploadedFile>,
    costs: HashMap<String, i64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock only happens in a failing test; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running fake Poe. Stops when dropped.
pub struct FakePoe {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakePoe {
    /// Starts on a free port of 127.0.0.1, accepting `api_key`.
    pub async fn start(api_key: &str) -> std::io::Result<FakePoe> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), api_key).await
    }

    pub async fn start_on(addr: SocketAddr, api_key: &str) -> std::io::Result<FakePoe> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            key: api_key.to_owned(),
            base_url: format!("http://{addr}"),
            state: Mutex::new(FakeState {
                scripts: HashMap::new(),
                counters: HashMap::new(),
                requests: Vec::new(),
                balance: 100_000,
                history: Vec::new(),
                models: default_models(),
                uploads: Vec::new(),
                costs: HashMap::new(),
            }),
            timing: Mutex::new(None),
        });
        let app = Router::new()
            .route("/bot/{name}", post(native_bot))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(list_models))
            .route("/usage/current_balance", get(current_balance))
            .route("/usage/points_history", get(points_history))
            .route(UPLOAD_PATH, post(upload))
            .route("/files/{id}", get(download))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%err, "fake Poe server stopped");
            }
        });
        Ok(FakePoe {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as `poe.base_url`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The URL to configure as `poe.upload_url`.
    pub fn upload_url(&self) -> String {
        format!("{}{UPLOAD_PATH}", self.shared.base_url)
    }

    /// From now on, requests for `model` (case-insensitive) follow `scenario`.
    pub fn script(&self, model: &str, scenario: Scenario) {
        let mut state = self.shared.lock();
        state.scripts.insert(model.to_ascii_lowercase(), scenario);
        state.counters.remove(&model.to_ascii_lowercase());
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The chat requests (either transport) for `model`.
    pub fn chat_requests(&self, model: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|request| {
                request.method == "POST"
                    && request.path != UPLOAD_PATH
                    && request.body.get("type").is_none_or(|kind| kind == "query")
                    && request
                        .model
                        .as_deref()
                        .is_some_and(|name| name.eq_ignore_ascii_case(model))
            })
            .collect()
    }

    pub fn uploads(&self) -> Vec<UploadedFile> {
        self.shared.lock().uploads.clone()
    }

    pub fn balance(&self) -> i64 {
        self.shared.lock().balance
    }

    pub fn set_balance(&self, points: i64) {
        self.shared.lock().balance = points;
    }

    /// Replaces the model list served at `/v1/models` (the whole `{"object":"list",…}` body).
    pub fn set_models(&self, list: Value) {
        self.shared.lock().models = list;
    }

    /// What one completed answer from `model` costs (default: 5 + its tokens).
    pub fn set_cost(&self, model: &str, points: i64) {
        self.shared
            .lock()
            .costs
            .insert(model.to_ascii_lowercase(), points);
    }

    /// The points history, newest first.
    pub fn history(&self) -> Vec<Value> {
        let mut history = self.shared.lock().history.clone();
        history.reverse();
        history
    }

    /// Starts recording when each piece of answer text is sent (for benchmarks).
    pub fn record_timing(&self) {
        *self.shared.timing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// What [`FakePoe::record_timing`] recorded, in order.
    pub fn sent_text(&self) -> Vec<SentText> {
        self.shared
            .timing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Adds an entry to the points history (as if spent elsewhere).
    pub fn push_history(&self, entry: Value) {
        self.shared.lock().history.push(entry);
    }
}

impl Drop for FakePoe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn default_models() -> Value {
    let text_model = |id: &str, parameters: Value| {
        json!({
            "id": id, "object": "model", "created": 1_771_000_000_000_i64, "owned_by": "Fake",
            "description": "a model of the fake Poe",
            "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"], "modality": "text,image->text"},
            "supported_features": [], "supported_endpoints": ["/v1/chat/completions"],
            "pricing": {"prompt": "0.0000026", "completion": "0.000013", "image": null, "request": null,
                         "input_cache_read": null, "input_cache_write": null},
            "context_window": {"context_length": 200_000, "max_output_tokens": 8192}, "context_length": 200_000,
            "metadata": {"display_name": id, "image": null, "url": null},
            "reasoning": null, "parameters": parameters,
        })
    };
    json!({"object": "list", "data": [
        text_model("echo", json!([])),
        text_model("Claude-Sonnet-4.6", json!([
            {"name": "thinking_budget", "schema": {"type": "number", "minimum": 0, "maximum": 31999}, "default_value": 4096}
        ])),
        {
            "id": "Imagen-4", "object": "model", "created": 1_771_000_000_000_i64, "owned_by": "Fake",
            "description": "an image model of the fake Poe",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["image"], "modality": "text->image"},
            "supported_features": [], "supported_endpoints": [],
            "pricing": null,
            "context_window": {"context_length": 8192, "max_output_tokens": null}, "context_length": 8192,
            "metadata": {"display_name": "Imagen-4", "image": null, "url": null},
            "reasoning": null,
            "parameters": [{"name": "aspect_ratio", "schema": {"enum": ["1:1", "16:9", "9:16"]}, "default_value": "1:1"}],
        }
    ]})
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

fn random_id(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

pub(crate) fn completion_id() -> String {
    format!("chatcmpl-{}", random_id(b"0123456789abcdef", 24))
}

fn error_response(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind, "code": code}})),
    )
        .into_response()
}

fn unauthorized() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
        "Incorrect API key provided. Get a key at https://poe.com/api_key",
    )
}

fn bearer_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|key| key == shared.key)
}

fn record(
    shared: &Shared,
    method: &str,
    path: &str,
    model: Option<&str>,
    headers: &HeaderMap,
    body: Value,
) {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    shared.lock().requests.push(RecordedRequest {
        method: method.into(),
        path: path.into(),
        model: model.map(str::to_owned),
        authorization,
        body,
        received_at: std::time::Instant::now(),
    });
}

/// The scenario for the next request to `model`.
fn next_scenario(shared: &Shared, model: &str) -> Scenario {
    let mut state = shared.lock();
    let key = model.to_ascii_lowercase();
    let index = {
        let counter = state.counters.entry(key.clone()).or_insert(0);
        *counter += 1;
        *counter - 1
    };
    state
        .scripts
        .get(&key)
        .map(|scenario| scenario.pick(index).clone())
        .unwrap_or(Scenario::Echo)
}

/// Charges a completed answer: a history entry and a lower balance.
fn charge(shared: &Shared, model: &str, answer: &str) {
    let mut state = shared.lock();
    let cost = state
        .costs
        .get(&model.to_ascii_lowercase())
        .copied()
        .unwrap_or(5 + render::tokens(answer) as i64);
    state.balance -= cost;
    let entry = json!({
        "query_id": random_id(b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", 17),
        "bot_name": model,
        "creation_time": now_micros(),
        "usage_type": "API",
        "cost_points": cost,
        "cost_usd": format!("{:.6}", cost as f64 * 0.00003),
    });
    state.history.push(entry);
}

/// Responses that do not depend on the transport: scripted errors and raw replays.
fn http_level(scenario: &Scenario) -> Option<Response> {
    match scenario {
        Scenario::Status {
            status,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, axum::Json(body.clone())).into_response();
            if let Some(seconds) = retry_after
                && let Ok(value) = seconds.to_string().parse()
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Some(response)
        }
        Scenario::Raw {
            status,
            content_type,
            body,
        } => Some(
            Response::builder()
                .status(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, content_type.as_str())
                .body(Body::from(body.clone()))
                .unwrap_or_default(),
        ),
        _ => None,
    }
}

/// Writes `frames` as a streamed body; `on_complete` runs once every frame was sent.
fn stream_body(
    shared: Arc<Shared>,
    model: String,
    frames: Vec<Frame>,
    on_complete: impl FnOnce() + Send + 'static,
) -> Body {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut sent_chars = 0;
        for frame in frames {
            match frame {
                Frame::Bytes(text) => {
                    if sender.send(Ok(Bytes::from(text))).await.is_err() {
                        return; // the client went away
                    }
                }
                Frame::Answer { bytes, chars } => {
                    if sender.send(Ok(Bytes::from(bytes))).await.is_err() {
                        return;
                    }
                    sent_chars += chars;
                    if let Some(log) = shared
                        .timing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_mut()
                    {
                        log.push(SentText {
                            model: model.clone(),
                            at: std::time::Instant::now(),
                            chars: sent_chars,
                        });
                    }
                }
                Frame::Sleep(duration) => tokio::time::sleep(duration).await,
                Frame::Drop => {
                    // Let what was sent reach the socket first: hyper discards its write
                    // buffer when the body fails, and a real drop loses only unsent bytes.
                    while sender.capacity() < sender.max_capacity() && !sender.is_closed() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let _ = sender
                        .send(Err(std::io::Error::other("connection dropped by the fake")))
                        .await;
                    return;
                }
                Frame::Stall => {
                    sender.closed().await;
                    return;
                }
            }
        }
        on_complete();
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

fn last_user_text(messages: &[Value], user_role: &str) -> String {
    let Some(message) = messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some(user_role))
    else {
        return String::new();
    };
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

async fn native_bot(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/bot/{name}");
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        record(&shared, "POST", &path, Some(&name), &headers, Value::Null);
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "The body is not JSON.",
        );
    };
    record(&shared, "POST", &path, Some(&name), &headers, body.clone());
    if !bearer_ok(&shared, &headers) {
        return unauthorized();
    }
    match body.get("type").and_then(Value::as_str) {
        Some("query") => {}
        // report_error, report_feedback, report_reaction, settings: acknowledged.
        Some(_) => return axum::Json(json!({})).into_response(),
        None => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_parameter",
                "`type` is required.",
            );
        }
    }
    let Some(query) = body.get("query").and_then(Value::as_array) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_parameter",
            "`query` must be a list of messages.",
        );
    };
    let scenario = next_scenario(&shared, &name);
    if let Some(response) = http_level(&scenario) {
        return response;
    }
    let steps = scenario::steps(&scenario, &last_user_text(query, "user"));
    let completed = steps.contains(&Step::Done);
    let answer = render::answer_text(&steps);
    let frames = render::native(&steps);
    let charged = shared.clone();
    let model = name.clone();
    event_stream(stream_body(shared, model, frames, move || {
        if completed {
            charge(&charged, &name, &answer);
        }
    }))
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/v1/chat/completions";
    let parsed = serde_json::from_slice::<Value>(&body);
    let model = parsed
        .as_ref()
        .ok()
        .and_then(|body| body.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    record(
        &shared,
        "POST",
        path,
        model.as_deref(),
        &headers,
        parsed.as_ref().cloned().unwrap_or(Value::Null),
    );
    if !bearer_ok(&shared, &headers) {
        return unauthorized();
    }
    let Ok(body) = parsed else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "The body is not valid JSON.",
        );
    };
    let Some(model) = model else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_parameter",
            "`model` is required.",
        );
    };
    let messages = match body.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages.clone(),
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_parameter",
                "`messages` must be a non-empty list.",
            );
        }
    };
    let prompt_tokens: u64 = messages
        .iter()
        .map(|message| {
            render::tokens(
                &message
                    .get("content")
                    .map(Value::to_string)
                    .unwrap_or_default(),
            )
        })
        .sum();
    let scenario = next_scenario(&shared, &model);
    if let Some(response) = http_level(&scenario) {
        return response;
    }
    let steps = scenario::steps(&scenario, &last_user_text(&messages, "user"));
    let completed = steps.contains(&Step::Done);
    let answer = render::answer_text(&steps);
    let charged = shared.clone();
    let charged_model = model.clone();
    let on_complete = move || {
        if completed {
            charge(&charged, &charged_model, &answer);
        }
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let frames = render::openai_stream(&steps, &model, prompt_tokens);
        return event_stream(stream_body(
            shared.clone(),
            model.clone(),
            frames,
            on_complete,
        ));
    }
    // Not streamed: the answer arrives whole, unless the scenario breaks it.
    if let Some(Step::Error(error)) = steps.iter().find(|step| matches!(step, Step::Error(_))) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": error})),
        )
            .into_response();
    }
    let completion = render::openai_completion(&steps, &model, prompt_tokens).to_string();
    let mut frames: Vec<Frame> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Sleep(duration) => Some(Frame::Sleep(*duration)),
            _ => None,
        })
        .collect();
    if steps.contains(&Step::Stall) {
        frames.push(Frame::Stall);
    } else if steps.contains(&Step::Drop) {
        frames.push(Frame::Bytes(completion[..completion.len() / 2].to_owned()));
        frames.push(Frame::Drop);
    } else {
        frames.push(Frame::Bytes(completion));
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(stream_body(
            shared.clone(),
            model.clone(),
            frames,
            on_complete,
        ))
        .unwrap_or_default()
}

async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "GET", "/v1/models", None, &headers, Value::Null);
    axum::Json(shared.lock().models.clone()).into_response()
}

async fn current_balance(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(
        &shared,
        "GET",
        "/usage/current_balance",
        None,
        &headers,
        Value::Null,
    );
    if !bearer_ok(&shared, &headers) {
        return unauthorized();
    }
    let balance = shared.lock().balance;
    axum::Json(json!({"current_point_balance": balance})).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
    starting_after: Option<String>,
}

async fn points_history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Response {
    record(
        &shared,
        "GET",
        "/usage/points_history",
        None,
        &headers,
        Value::Null,
    );
    if !bearer_ok(&shared, &headers) {
        return unauthorized();
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_parameter",
            "`limit` must be between 1 and 100.",
        );
    }
    let newest_first: Vec<Value> = shared.lock().history.iter().rev().cloned().collect();
    let start = match &query.starting_after {
        None => 0,
        Some(after) => match newest_first
            .iter()
            .position(|entry| entry.get("query_id").and_then(Value::as_str) == Some(after.as_str()))
        {
            Some(position) => position + 1,
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_parameter",
                    "Unknown `starting_after`.",
                );
            }
        },
    };
    let page: Vec<Value> = newest_first
        .iter()
        .skip(start)
        .take(limit)
        .cloned()
        .collect();
    let has_more = start + page.len() < newest_first.len();
    axum::Json(json!({"has_more": has_more, "length": page.len(), "data": page})).into_response()
}

async fn upload(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let raw_key_ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == shared.key);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let id = random_id(b"0123456789abcdef", 16);
    let url = format!("{}/files/{id}", shared.base_url);
    let mut file = UploadedFile {
        id: id.clone(),
        name: "file".into(),
        content_type: "application/octet-stream".into(),
        bytes: Vec::new(),
        download_url: None,
        url: url.clone(),
    };
    if content_type.starts_with("multipart/form-data") {
        let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_body",
                "Malformed multipart body.",
            );
        };
        let mut found = false;
        while let Ok(Some(field)) = multipart.next_field().await {
            if field.name() != Some("file") {
                continue;
            }
            file.name = field.file_name().unwrap_or("file").to_owned();
            if let Some(mime) = field.content_type() {
                file.content_type = mime.to_owned();
            }
            match field.bytes().await {
                Ok(bytes) => file.bytes = bytes.to_vec(),
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "invalid_body",
                        "The file part is broken.",
                    );
                }
            }
            found = true;
        }
        if !found {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_parameter",
                "No `file` part.",
            );
        }
    } else {
        let Ok(axum::Form(form)) =
            axum::Form::<HashMap<String, String>>::from_request(request, &()).await
        else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_body",
                "Expected a form.",
            );
        };
        let Some(download_url) = form.get("download_url") else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_parameter",
                "`download_url` is required.",
            );
        };
        file.download_url = Some(download_url.clone());
        if let Some(name) = form.get("download_filename") {
            file.name = name.clone();
        }
    }
    if file.content_type == "application/octet-stream" {
        file.content_type = guess_mime(&file.name).into();
    }
    record(
        &shared,
        "POST",
        UPLOAD_PATH,
        None,
        &headers,
        json!({"name": file.name, "content_type": file.content_type, "size": file.bytes.len(), "download_url": file.download_url}),
    );
    if !raw_key_ok {
        return unauthorized();
    }
    let mime = file.content_type.clone();
    shared.lock().uploads.push(file);
    axum::Json(json!({"attachment_url": url, "mime_type": mime})).into_response()
}

fn guess_mime(name: &str) -> &'static str {
    let extension = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

async fn download(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let state = shared.lock();
    match state.uploads.iter().find(|file| file.id == id) {
        Some(file) => (
            [(header::CONTENT_TYPE, file.content_type.clone())],
            file.bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
