//! A thin OpenSearch REST client over `reqwest`: only the calls auditflow makes (health,
//! index template, `_bulk`, search, index listing and deletion), each error classed as
//! transient (connection, 429, 5xx: retry) or permanent (the request itself is refused).

use std::time::Duration;

use serde_json::Value;

use super::IndexSettings;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    #[error("OpenSearch unavailable: {0}")]
    Transient(String),
    #[error("OpenSearch refused the request: {0}")]
    Permanent(String),
    /// 401/403: wrong or missing credentials, or a role without the right: no document's fault.
    #[error("OpenSearch refused our credentials or role: {0}")]
    Unauthorized(String),
}

impl SearchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SearchError::Transient(_))
    }
}

#[derive(Clone)]
pub struct SearchClient {
    http: reqwest::Client,
    base: String,
    username: Option<String>,
    password: Option<String>,
}

impl SearchClient {
    pub fn new(settings: &IndexSettings) -> Result<SearchClient, SearchError> {
        let url = settings
            .url
            .as_deref()
            .ok_or_else(|| SearchError::Permanent("no search store configured (AUDITFLOW_OPENSEARCH_URL)".into()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SearchError::Permanent(e.to_string()))?;
        Ok(SearchClient {
            http,
            base: url.trim_end_matches('/').to_string(),
            username: settings.username.clone(),
            password: settings.password.clone(),
        })
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Value, SearchError> {
        let mut req = self.http.request(method, format!("{}/{}", self.base, path.trim_start_matches('/')));
        if let Some(u) = &self.username {
            req = req.basic_auth(u, self.password.as_ref());
        }
        if let Some((bytes, content_type)) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes);
        }
        let resp = req.send().await.map_err(|e| SearchError::Transient(e.without_url().to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| SearchError::Transient(e.without_url().to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let why = value
            .pointer("/error/reason")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        if status.as_u16() == 429 || status.is_server_error() {
            Err(SearchError::Transient(format!("{status}: {why}")))
        } else if matches!(status.as_u16(), 401 | 403) {
            Err(SearchError::Unauthorized(format!("{status}: {why}")))
        } else {
            Err(SearchError::Permanent(format!("{status}: {why}")))
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, SearchError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Any request with a JSON body (operators' and tests' own calls).
    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value, SearchError> {
        self.send(method, path, Some((body.to_string().into_bytes(), "application/json"))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, SearchError> {
        self.send(reqwest::Method::POST, path, Some((body.to_string().into_bytes(), "application/json"))).await
    }

    /// Whether the cluster answers and can take writes (health at least yellow).
    pub async fn health(&self) -> Result<(), SearchError> {
        let h = self.get("_cluster/health").await?;
        match h.get("status").and_then(Value::as_str) {
            Some("green" | "yellow") => Ok(()),
            other => Err(SearchError::Transient(format!("cluster health {other:?}"))),
        }
    }

    /// The template for new indices, and the fields the existing ones lack added to their
    /// mappings (a field added in a later version, such as `asn`, would otherwise be refused by
    /// their strict mapping until next month's index). Fields an index already has are left as
    /// they are: an index whose mapping drifted keeps refusing what it refuses (those documents
    /// are dead-lettered with the reason), it does not stop the stage.
    pub async fn put_template(&self, settings: &IndexSettings) -> Result<(), SearchError> {
        let template = super::template(settings);
        let body = template.to_string().into_bytes();
        self.send(reqwest::Method::PUT, &format!("_index_template/{}", settings.template_name()), Some((body, "application/json"))).await?;
        let wanted = template["template"]["mappings"]["properties"].as_object().cloned().unwrap_or_default();
        let existing = self.get(&format!("{}-*/_mapping?allow_no_indices=true&ignore_unavailable=true", settings.prefix)).await?;
        for (index, mapping) in existing.as_object().into_iter().flatten() {
            let have = mapping["mappings"]["properties"].as_object();
            let missing: serde_json::Map<String, Value> =
                wanted.iter().filter(|(k, _)| !have.is_some_and(|h| h.contains_key(*k))).map(|(k, v)| (k.clone(), v.clone())).collect();
            if missing.is_empty() {
                continue;
            }
            let fields: Vec<String> = missing.keys().cloned().collect();
            let body = serde_json::json!({"properties": missing}).to_string().into_bytes();
            match self.send(reqwest::Method::PUT, &format!("{index}/_mapping"), Some((body, "application/json"))).await {
                Ok(_) => tracing::info!(%index, fields = ?fields, "added the template's new fields to an existing index"),
                Err(SearchError::Permanent(why)) => {
                    tracing::warn!(%index, fields = ?fields, error = %why, "cannot add the template's new fields to an existing index; documents it refuses are dead-lettered")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn bulk(&self, body: Vec<u8>) -> Result<Value, SearchError> {
        self.send(reqwest::Method::POST, "_bulk", Some((body, "application/x-ndjson"))).await
    }

    /// Indices named `<prefix>-*`.
    pub async fn indices(&self, prefix: &str) -> Result<Vec<String>, SearchError> {
        let v = self.get(&format!("_cat/indices/{prefix}-*?format=json&h=index")).await?;
        Ok(v.as_array().map(|a| a.iter().filter_map(|i| i.get("index").and_then(Value::as_str).map(str::to_string)).collect()).unwrap_or_default())
    }

    pub async fn delete_index(&self, name: &str) -> Result<(), SearchError> {
        self.delete(name).await
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), SearchError> {
        self.delete(&format!("_index_template/{name}")).await
    }

    /// DELETE that counts "not there" as done.
    async fn delete(&self, path: &str) -> Result<(), SearchError> {
        match self.send(reqwest::Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            Err(SearchError::Permanent(why)) if why.starts_with("404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn search(&self, index_pattern: &str, body: &Value) -> Result<Value, SearchError> {
        self.post_json(&format!("{index_pattern}/_search"), body).await
    }

    /// Redact every document of a subject (any of its pseudonyms) in `<prefix>-*`: the
    /// identifying fields go, the facts stay. Returns how many documents were redacted.
    pub async fn redact_subject(&self, prefix: &str, pseudonym: &str) -> Result<u64, SearchError> {
        let pattern = format!("{prefix}-*");
        let mut total = 0u64;
        loop {
            self.refresh(&pattern).await?;
            let r = self
                .search(&pattern, &serde_json::json!({"size": 1000, "_source": false, "query": super::subject_query(pseudonym)}))
                .await?;
            let hits: Vec<(String, String)> = r
                .pointer("/hits/hits")
                .and_then(Value::as_array)
                .map(|h| {
                    h.iter()
                        .filter_map(|d| Some((d.get("_index")?.as_str()?.to_string(), d.get("_id")?.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            if hits.is_empty() {
                return Ok(total);
            }
            let resp = self.bulk(super::redaction_body(&hits)).await?;
            if resp.get("errors").and_then(Value::as_bool) == Some(true) {
                return Err(SearchError::Transient("some documents could not be redacted; run the erasure again".into()));
            }
            total += hits.len() as u64;
        }
    }

    pub async fn refresh(&self, index_pattern: &str) -> Result<(), SearchError> {
        self.send(reqwest::Method::POST, &format!("{index_pattern}/_refresh?allow_no_indices=true"), None).await.map(|_| ())
    }
}
