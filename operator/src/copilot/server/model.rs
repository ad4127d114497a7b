//! The client of the OpenAI-compatible model API: `POST {endpoint}/embeddings`
//! and `POST {endpoint}/chat/completions`, with the key as a bearer token.
//!
//! Every failure becomes a [`ModelError`] whose message names the cause
//! (timeout, refused key, wrong embedding size, HTTP status) and never the
//! key: response bodies of failed calls are not repeated, since providers
//! echo the key they refused.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Inputs embedded per request.
const EMBED_BATCH: usize = 64;

/// What went wrong with a model call.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model provider did not answer within {0} s")]
    Timeout(u64),
    #[error("the model provider refused the API key (HTTP {0})")]
    KeyRefused(u16),
    #[error("the embedding model returned {got} dimensions, the knowledge index holds {want}")]
    Dimensions { got: usize, want: usize },
    #[error("the model provider answered HTTP {0}")]
    Status(u16),
    #[error("the model provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the model provider's answer is malformed: {0}")]
    Malformed(String),
    #[error("the model returned {0}")]
    Empty(&'static str),
}

impl ModelError {
    /// The status the copilot answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A fixed word for the cause (a metric label).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::KeyRefused(_) => "key_refused",
            Self::Dimensions { .. } => "dimensions",
            Self::Status(_) => "status",
            Self::Unreachable(_) => "unreachable",
            Self::Malformed(_) => "malformed",
            Self::Empty(_) => "empty",
        }
    }
}

/// Embeddings of some inputs, in input order.
#[derive(Debug)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: i64,
}

/// A chat completion.
#[derive(Debug)]
pub struct Completion {
    pub content: String,
    /// A confidence the response states (`confidence` on the response or
    /// its first choice), if any.
    pub confidence: Option<f64>,
    pub tokens: i64,
}

/// One chat message.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// The model API of one copilot.
pub struct ModelClient {
    http: reqwest::Client,
    endpoint: String,
    name: String,
    key: String,
    dimensions: usize,
    timeout: Duration,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelClient")
            .field("endpoint", &self.endpoint)
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ModelClient {
    pub fn new(
        endpoint: &str,
        name: &str,
        key: String,
        dimensions: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            name: name.to_string(),
            key,
            dimensions,
            timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ModelError> {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.key))
            .map_err(|_| ModelError::Malformed("the API key is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let result = async {
            let response = self
                .http
                .post(format!("{}/{path}", self.endpoint))
                .header(reqwest::header::AUTHORIZATION, auth)
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            if !status.is_success() {
                return Ok(Err(status));
            }
            response.json::<Value>().await.map(Ok)
        }
        .await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(status)) if matches!(status.as_u16(), 401 | 403) => {
                Err(ModelError::KeyRefused(status.as_u16()))
            }
            Ok(Err(status)) => Err(ModelError::Status(status.as_u16())),
            Err(e) if e.is_timeout() => Err(ModelError::Timeout(self.timeout.as_secs())),
            Err(e) if e.is_decode() => Err(ModelError::Malformed("not JSON".into())),
            Err(e) => Err(ModelError::Unreachable(crate::error_chain::message(
                &e.without_url(),
            ))),
        }
    }

    /// Embeds `inputs`, checking that each embedding has the index's dimensions.
    pub async fn embed(&self, inputs: &[String]) -> Result<Embeddings, ModelError> {
        let mut out = Embeddings {
            vectors: Vec::with_capacity(inputs.len()),
            tokens: 0,
        };
        for batch in inputs.chunks(EMBED_BATCH) {
            let body = self
                .post("embeddings", json!({"model": self.name, "input": batch}))
                .await?;
            let data = body["data"]
                .as_array()
                .ok_or_else(|| ModelError::Malformed("no data array".into()))?;
            if data.len() != batch.len() {
                return Err(ModelError::Malformed(format!(
                    "{} embeddings for {} inputs",
                    data.len(),
                    batch.len()
                )));
            }
            let mut vectors: Vec<(usize, Vec<f32>)> = Vec::with_capacity(data.len());
            for (position, item) in data.iter().enumerate() {
                let index = item["index"].as_u64().map_or(position, |i| i as usize);
                let vector = item["embedding"]
                    .as_array()
                    .ok_or_else(|| ModelError::Malformed("an embedding is not an array".into()))?
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| {
                        ModelError::Malformed("an embedding holds a non-number".into())
                    })?;
                if vector.len() != self.dimensions {
                    return Err(ModelError::Dimensions {
                        got: vector.len(),
                        want: self.dimensions,
                    });
                }
                if vector.iter().all(|x| *x == 0.0) {
                    return Err(ModelError::Empty("an all-zero embedding"));
                }
                vectors.push((index, vector));
            }
            vectors.sort_by_key(|(i, _)| *i);
            if vectors
                .iter()
                .enumerate()
                .any(|(i, (index, _))| i != *index)
            {
                return Err(ModelError::Malformed(
                    "embedding indexes do not match the inputs".into(),
                ));
            }
            out.vectors.extend(vectors.into_iter().map(|(_, v)| v));
            out.tokens += tokens(&body);
        }
        Ok(out)
    }

    /// Asks the chat model.
    pub async fn chat(&self, messages: &[Message]) -> Result<Completion, ModelError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let body = self
            .post(
                "chat/completions",
                json!({"model": self.name, "messages": messages}),
            )
            .await?;
        let choice = &body["choices"][0];
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| ModelError::Malformed("no choices[0].message.content".into()))?
            .trim()
            .to_string();
        if content.is_empty() {
            return Err(ModelError::Empty("an empty answer"));
        }
        let confidence = body["confidence"]
            .as_f64()
            .or_else(|| choice["confidence"].as_f64());
        Ok(Completion {
            content,
            confidence,
            tokens: tokens(&body),
        })
    }
}

/// Tokens a response's `usage` block reports.
fn tokens(body: &Value) -> i64 {
    let usage = &body["usage"];
    usage["total_tokens"].as_i64().unwrap_or_else(|| {
        usage["prompt_tokens"].as_i64().unwrap_or(0)
            + usage["completion_tokens"].as_i64().unwrap_or(0)
    })
}

/// A vector as pgvector's text form, `[1,2.5,…]`.
pub fn vector_text(vector: &[f32]) -> String {
    let mut out = String::with_capacity(vector.len() * 10 + 2);
    out.push('[');
    for (i, x) in vector.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_in_pgvector_text_form() {
        assert_eq!(vector_text(&[1.0, -0.5, 0.125]), "[1,-0.5,0.125]");
        assert_eq!(vector_text(&[]), "[]");
    }

    #[test]
    fn usage_is_read_from_either_form() {
        assert_eq!(tokens(&json!({"usage": {"total_tokens": 7}})), 7);
        assert_eq!(
            tokens(&json!({"usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
            5
        );
        assert_eq!(tokens(&json!({})), 0);
    }

    #[test]
    fn errors_name_the_cause_and_status() {
        assert_eq!(
            ModelError::Timeout(30).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let e = ModelError::Dimensions { got: 3, want: 384 };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.to_string().contains("3 dimensions"));
        assert!(
            ModelError::KeyRefused(401)
                .to_string()
                .contains("refused the API key")
        );
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ModelClient::new(
            "http://model/v1",
            "m",
            "sk-secret".into(),
            3,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("sk-secret"));
    }
}
