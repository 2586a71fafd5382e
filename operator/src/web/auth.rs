//! Who may see the fleet view: the caller's bearer token (the `Authorization` header, or the
//! cookie the login form sets from it) checked by the apiserver with a TokenReview, then a
//! SubjectAccessReview for `list machines.metal.ironpool.dev` in the namespace the operator
//! watches (all namespaces when it watches all). Answers are cached briefly per token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// The cookie the login form sets.
pub const COOKIE_NAME: &str = "ironpool_token";
/// How long an allowed answer is reused before the apiserver is asked again.
const ALLOWED_TTL: Duration = Duration::from_secs(30);
/// How long a refusal is reused (short: a RoleBinding just made should work soon).
const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most; beyond it the cache starts again from empty.
const CACHE_LIMIT: usize = 1024;

/// The answer for one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed to list Machines.
    Allowed {
        /// The user name the apiserver gave.
        user: String,
    },
    /// No token, or one the apiserver does not accept.
    Unauthenticated {
        /// Why, in the apiserver's words when it gave some.
        reason: String,
    },
    /// A valid token whose user may not list Machines here.
    Forbidden {
        /// The user name.
        user: String,
        /// The authorizer's reason, often empty.
        reason: String,
    },
}

/// The bearer token of a request: `Authorization: Bearer <t>`, else the login cookie.
pub fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, t) = v.trim().split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
            .then(|| t.trim().to_string());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE_NAME && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// Checks tokens against the apiserver and caches the answers.
pub struct Auth {
    client: Client,
    /// Namespace of the SubjectAccessReview; None = all namespaces.
    namespace: Option<String>,
    cache: Mutex<HashMap<String, (Verdict, Instant)>>,
}

impl Auth {
    /// Checks with `client` (the operator's own identity, which needs `create` on
    /// tokenreviews and subjectaccessreviews) for access to Machines of `namespace`.
    pub fn new(client: Client, namespace: Option<String>) -> Auth {
        Auth {
            client,
            namespace,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict for `token`, from the cache or the apiserver.
    pub async fn check(&self, token: Option<&str>) -> Result<Verdict, kube::Error> {
        let Some(token) = token else {
            return Ok(Verdict::Unauthenticated {
                reason: "no bearer token".into(),
            });
        };
        if let Some(v) = self.cached(token) {
            return Ok(v);
        }
        let verdict = self.review(token).await?;
        let ttl = match verdict {
            Verdict::Allowed { .. } => ALLOWED_TTL,
            _ => REFUSED_TTL,
        };
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(token.to_string(), (verdict.clone(), now + ttl));
        }
        Ok(verdict)
    }

    fn cached(&self, token: &str) -> Option<Verdict> {
        let cache = self.cache.lock().ok()?;
        let (v, until) = cache.get(token)?;
        (*until > Instant::now()).then(|| v.clone())
    }

    async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Verdict::Unauthenticated {
                reason: status
                    .error
                    .unwrap_or_else(|| "the apiserver did not accept the token".into()),
            });
        }
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    namespace: self.namespace.clone(),
                    verb: Some("list".into()),
                    group: Some(ironpool_crds::GROUP.into()),
                    resource: Some("machines".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed {
            Verdict::Allowed { user: name }
        } else {
            Verdict::Forbidden {
                user: name,
                reason: status.reason.unwrap_or_default(),
            }
        })
    }

    /// What a refused user must be allowed, in words: the scope of the review.
    pub fn scope(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("list machines.metal.ironpool.dev in namespace {ns}"),
            None => "list machines.metal.ironpool.dev in all namespaces".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_header_then_cookie() {
        assert_eq!(
            token(&headers(&[("authorization", "Bearer abc")])),
            Some("abc".into())
        );
        assert_eq!(
            token(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc".into())
        );
        assert_eq!(token(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(token(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(
            token(&headers(&[("cookie", "a=b; ironpool_token=t.k.n; c=d")])),
            Some("t.k.n".into())
        );
        assert_eq!(token(&headers(&[("cookie", "ironpool_token=")])), None);
        assert_eq!(token(&HeaderMap::new()), None);
    }
}
