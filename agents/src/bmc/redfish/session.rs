//! Redfish authentication: a session (POST to the Sessions collection, `X-Auth-Token`,
//! reused until the BMC answers 401, deleted on close or drop), or HTTP basic auth when
//! the BMC offers no sessions.

use base64::Engine;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use serde_json::json;
use tracing::debug;

use super::http::{Response, Transport};
use super::types::{ServiceRoot, SessionService};
use crate::bmc::{BmcError, Credentials};

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// A session token, and the session's URI to delete at the end.
    Session {
        /// Value of `X-Auth-Token`.
        token: HeaderValue,
        /// The session resource (from `Location`), if the BMC said.
        location: Option<String>,
    },
    /// HTTP basic auth on every request.
    Basic(HeaderValue),
}

/// Header name and value to send with a request.
pub fn header(auth: &Auth) -> Option<(&'static str, &HeaderValue)> {
    match auth {
        Auth::Session { token, .. } => Some(("x-auth-token", token)),
        Auth::Basic(v) => Some(("authorization", v)),
    }
}

/// `Basic base64(user:password)`, marked sensitive so it never shows in debug output.
pub fn basic(creds: &Credentials) -> Result<HeaderValue, BmcError> {
    let raw = format!("{}:{}", creds.username, creds.password);
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .map_err(|_| {
        BmcError::Setup(
            "the BMC username or password holds characters that cannot be sent in HTTP".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Reads the service root (sending basic auth, which BMCs that protect the root need).
pub async fn service_root(t: &Transport, creds: &Credentials) -> Result<ServiceRoot, BmcError> {
    let resp = t
        .send(
            Method::GET,
            "/redfish/v1/",
            Some(("authorization", &basic(creds)?)),
            None,
        )
        .await?;
    if resp.status == StatusCode::UNAUTHORIZED {
        return Err(BmcError::Authentication {
            host: t.host().to_string(),
        });
    }
    parse(t, "GET /redfish/v1/", &resp)
}

/// Logs in: a session when the BMC offers one, else basic auth.
pub async fn login(
    t: &Transport,
    creds: &Credentials,
    root: &ServiceRoot,
) -> Result<Auth, BmcError> {
    let Some(sessions) = sessions_path(t, creds, root).await? else {
        debug!(bmc = t.host(), "no SessionService; using basic auth");
        return Ok(Auth::Basic(basic(creds)?));
    };
    let body = json!({"UserName": creds.username, "Password": creds.password});
    let resp = t.send(Method::POST, &sessions, None, Some(&body)).await?;
    match resp.status {
        s if s.is_success() => match resp.headers.get("x-auth-token") {
            Some(token) => {
                let mut token = token.clone();
                token.set_sensitive(true);
                let location = resp
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(path_of);
                debug!(bmc = t.host(), "Redfish session opened");
                Ok(Auth::Session { token, location })
            }
            None => Ok(Auth::Basic(basic(creds)?)),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(BmcError::Authentication {
            host: t.host().to_string(),
        }),
        // 404, 405, 501...: no usable session service.
        _ => Ok(Auth::Basic(basic(creds)?)),
    }
}

/// Deletes a session; failures only logged (the BMC expires it anyway).
pub async fn logout(t: &Transport, auth: &Auth) {
    if let Auth::Session {
        token,
        location: Some(loc),
    } = auth
    {
        let mut req_auth = token.clone();
        req_auth.set_sensitive(true);
        match t
            .send(Method::DELETE, loc, Some(("x-auth-token", &req_auth)), None)
            .await
        {
            Ok(r) => debug!(
                bmc = t.host(),
                status = r.status.as_u16(),
                "Redfish session closed"
            ),
            Err(e) => debug!(bmc = t.host(), error = %e, "closing the Redfish session failed"),
        }
    }
}

async fn sessions_path(
    t: &Transport,
    creds: &Credentials,
    root: &ServiceRoot,
) -> Result<Option<String>, BmcError> {
    if let Some(p) = root
        .links
        .as_ref()
        .and_then(|l| l.sessions.as_ref())
        .and_then(|l| l.odata_id.clone())
    {
        return Ok(Some(p));
    }
    let Some(svc) = root
        .session_service
        .as_ref()
        .and_then(|l| l.odata_id.clone())
    else {
        return Ok(None);
    };
    let resp = t
        .send(
            Method::GET,
            &svc,
            Some(("authorization", &basic(creds)?)),
            None,
        )
        .await?;
    if !resp.status.is_success() {
        return Ok(None);
    }
    let svc: SessionService = parse(t, "GET SessionService", &resp)?;
    Ok(svc.sessions.and_then(|l| l.odata_id))
}

/// Parses a JSON answer, or says what came instead.
pub fn parse<T: serde::de::DeserializeOwned>(
    t: &Transport,
    operation: &str,
    resp: &Response,
) -> Result<T, BmcError> {
    let protocol = |detail: String| BmcError::Protocol {
        host: t.host().to_string(),
        operation: operation.to_string(),
        detail,
    };
    if !resp.status.is_success() {
        return Err(protocol(format!(
            "HTTP {}: {}",
            resp.status,
            excerpt(&resp.body)
        )));
    }
    serde_json::from_slice(&resp.body).map_err(|e| protocol(format!("not the JSON expected: {e}")))
}

/// The first 200 characters of a body, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// The path of a URL or path (`Location` may be absolute).
fn path_of(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_else(|| "/".into()),
        None => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_becomes_a_path() {
        assert_eq!(
            path_of("https://10.0.0.1/redfish/v1/SessionService/Sessions/7"),
            "/redfish/v1/SessionService/Sessions/7"
        );
        assert_eq!(
            path_of("/redfish/v1/SessionService/Sessions/7"),
            "/redfish/v1/SessionService/Sessions/7"
        );
    }

    #[test]
    fn basic_header_is_sensitive() {
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let h = basic(&c).unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Basic dTpw");
    }
}
