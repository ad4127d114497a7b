//! A STAND-IN for an OpenAI-compatible model provider, for the copilot
//! suites. It is not a language model (none can be downloaded here): it
//! serves the two calls the copilot makes, on 127.0.0.1, deterministically:
//!
//! - `POST /v1/embeddings`: a hashed bag of words ([`embed`]): each word
//!   (lower case, stop words dropped) adds ±1 to one of `dims` coordinates
//!   chosen by its FNV-1a hash, and the vector is L2-normalised, so texts
//!   sharing words are near and texts sharing none are nearly orthogonal;
//! - `POST /v1/chat/completions`: answers by repeating the first numbered
//!   context line (`[1] …`) of the last message, citing `[1]`, or "I do not
//!   know." without context; with a `usage` block counting words.
//!
//! Both check the bearer key. [`Behaviour`] makes it fail the ways a real
//! provider does: answer too late, refuse the key (401, echoing the key in
//! the body as some providers do), or return embeddings of the wrong size.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The model name the stand-in reports.
pub const MODEL: &str = "standin-hashed-bag-of-words";

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As described in the module's notes.
    Normal,
    /// Normally, after waiting this long.
    Slow(Duration),
    /// 401 to every call, whatever the key.
    RejectKey,
    /// Embeddings of this many dimensions instead of the configured ones.
    WrongDimensions(usize),
}

struct Shared {
    dims: usize,
    key: String,
    behaviour: Mutex<Behaviour>,
    embedding_calls: AtomicUsize,
    chat_calls: AtomicUsize,
    chats: Mutex<Vec<Value>>,
}

/// A running stand-in; stops when dropped.
pub struct ModelStandin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "in",
    "is", "it", "its", "of", "on", "or", "our", "should", "that", "the", "their", "this", "to",
    "we", "what", "when", "which", "who", "with",
];

fn fnv1a(word: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in word.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The stand-in's embedding of `text` in `dims` dimensions (unit length).
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let dims = dims.max(1);
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 1 && !STOP_WORDS.contains(&w.as_str()))
    {
        let hash = fnv1a(&word);
        let sign = if hash >> 63 == 1 { -1.0 } else { 1.0 };
        v[(hash % dims as u64) as usize] += sign;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        v[0] = 1.0;
    } else {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn words(text: &str) -> i64 {
    text.split_whitespace().count() as i64
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Waits, or refuses, as the behaviour says; `None` to go on.
async fn gate(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let behaviour = *shared.behaviour.lock().unwrap();
    if let Behaviour::Slow(delay) = behaviour {
        tokio::time::sleep(delay).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if behaviour == Behaviour::RejectKey || presented != shared.key {
        return Some(json_reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": {
                "message": format!("Incorrect API key provided: {presented}"),
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }}),
        ));
    }
    None
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.embedding_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refused) = gate(&shared, &headers).await {
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "not JSON"}}),
        );
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    let dims = match *shared.behaviour.lock().unwrap() {
        Behaviour::WrongDimensions(n) => n,
        _ => shared.dims,
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text, dims)}))
        .collect();
    let tokens: i64 = inputs.iter().map(|t| words(t)).sum();
    json_reply(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": request["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.chat_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(refused) = gate(&shared, &headers).await {
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "not JSON"}}),
        );
    };
    shared.chats.lock().unwrap().push(request.clone());
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let answer = last
        .lines()
        .find_map(|l| l.strip_prefix("[1] "))
        .map_or_else(
            || "I do not know.".to_string(),
            |line| format!("According to the context: {line} [1]"),
        );
    let prompt_tokens: i64 = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(words)
        .sum();
    let completion_tokens = words(&answer);
    json_reply(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }),
    )
}

impl ModelStandin {
    /// Serves on a free loopback port, embedding in `dims` dimensions and
    /// accepting only `key`.
    pub async fn start(dims: usize, key: &str) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            dims,
            key: key.to_string(),
            behaviour: Mutex::new(Behaviour::Normal),
            embedding_calls: AtomicUsize::new(0),
            chat_calls: AtomicUsize::new(0),
            chats: Mutex::new(vec![]),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// The base URL to configure as the model endpoint (`…/v1`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Calls to `/v1/embeddings` so far.
    pub fn embedding_calls(&self) -> usize {
        self.shared.embedding_calls.load(Ordering::SeqCst)
    }

    /// Calls to `/v1/chat/completions` so far.
    pub fn chat_calls(&self) -> usize {
        self.shared.chat_calls.load(Ordering::SeqCst)
    }

    /// The chat requests answered so far, in order.
    pub fn chats(&self) -> Vec<Value> {
        self.shared.chats.lock().unwrap().clone()
    }
}

impl Drop for ModelStandin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_unit_length_and_near_for_shared_words() {
        let a = embed(
            "Escalate a severity one outage to the partner duty engineer",
            256,
        );
        let b = embed("severity one outage: escalate", 256);
        let c = embed("cafeteria chairs colour", 256);
        assert_eq!(a.len(), 256);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cosine(&a, &b) > 0.5, "{}", cosine(&a, &b));
        assert!(cosine(&a, &c).abs() < 0.3, "{}", cosine(&a, &c));
        assert_eq!(embed("", 4), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            a,
            embed(
                "Escalate a severity one outage to the partner duty engineer",
                256
            )
        );
    }
}
