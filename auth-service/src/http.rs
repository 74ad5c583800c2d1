//! The JSON HTTP API of CONTRACT §3, for browsers and curl, plus the JWKS document. It mirrors
//! the gRPC calls through the same [`Auth`] methods.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{
        ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State,
        rejection::JsonRejection,
    },
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{
    auth::{Auth, TokenPair},
    domain::{Email, Password, RefreshToken},
    error::AuthError,
    throttle::TokenEndpoint,
};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/v1/refresh", post(refresh))
        .route("/v1/logout", post(logout))
        .route("/oauth/token", post(oauth_token))
        .route("/.well-known/jwks.json", get(jwks))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_declared_oversize))
        .with_state(auth)
}

/// Answers 413 from the declared length alone, without waiting for a body it will not read.
/// (Chunked bodies are cut off at the same limit by `DefaultBodyLimit` while being read.)
async fn refuse_declared_oversize(request: Request, next: middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY_BYTES as u64 => AuthError::BodyTooLarge.into_response(),
        _ => next.run(request).await,
    }
}

/// `Json<T>` whose rejections are answered in the API's error shape.
struct ApiJson<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AuthError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> AuthError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            AuthError::InvalidInput("the body must be application/json")
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => AuthError::BodyTooLarge,
        JsonRejection::JsonDataError(_) => {
            AuthError::InvalidInput("the JSON body has missing or mistyped fields")
        }
        _ => AuthError::InvalidInput("the body is not valid JSON"),
    }
}

/// The client's address: the TCP peer, or whom a trusted proxy says it forwards for.
struct ClientAddr(Option<IpAddr>);

impl FromRequestParts<Arc<Auth>> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, auth: &Arc<Auth>) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(Self(peer.map(|peer| {
            auth.proxies.resolve_http(peer, &parts.headers)
        })))
    }
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
struct LogoutBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    user_id: String,
    session_id: String,
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            user_id: pair.user_id.to_string(),
            session_id: pair.session_id.to_string(),
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose().to_owned(),
            token_type: "Bearer",
            expires_in: pair.expires_in.as_secs(),
        }
    }
}

fn no_store<T: IntoResponse>(status: StatusCode, body: T) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], body).into_response()
}

async fn register(
    State(auth): State<Arc<Auth>>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, AuthError> {
    let email = Email::parse(&body.email)?;
    let password = Password::parse(body.password)?;
    let pair = auth.register(email, password, client).await?;
    Ok(no_store(
        StatusCode::CREATED,
        Json(TokenResponse::from(pair)),
    ))
}

async fn login(
    State(auth): State<Arc<Auth>>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, AuthError> {
    let email = Email::parse(&body.email)?;
    let password = Password::for_login(body.password)?;
    let pair = auth.login(email, password, client).await?;
    Ok(no_store(StatusCode::OK, Json(TokenResponse::from(pair))))
}

async fn refresh(
    State(auth): State<Arc<Auth>>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, AuthError> {
    auth.throttle
        .token_request_from(client, TokenEndpoint::Refresh)
        .await?;
    let token = RefreshToken::parse(&body.refresh_token)?;
    let pair = auth.refresh(token).await?;
    Ok(no_store(StatusCode::OK, Json(TokenResponse::from(pair))))
}

async fn logout(
    State(auth): State<Arc<Auth>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, AuthError> {
    let body: LogoutBody = if body.is_empty() {
        LogoutBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| AuthError::InvalidInput("the body is not valid JSON"))?
    };
    match (body.refresh_token, bearer(&headers)) {
        (Some(refresh), _) => auth.logout_refresh(RefreshToken::parse(&refresh)?).await?,
        (None, Some(access)) => auth.logout_access(access).await?,
        (None, None) => {
            return Err(AuthError::InvalidInput(
                "a refresh_token or a bearer access token is required",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    tollgate_shared::tokens::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
}

/// `POST /oauth/token` (RFC 6749 §4.4), answering errors in the RFC's shape.
async fn oauth_token(
    State(auth): State<Arc<Auth>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let throttled = auth
        .throttle
        .token_request_from(client, TokenEndpoint::ClientCredentials)
        .await;
    match throttled.and_then(|()| issue_from_form(&auth, &headers, &body)) {
        Ok(response) => response,
        Err(err) => err.into_oauth_response(),
    }
}

fn issue_from_form(auth: &Auth, headers: &HeaderMap, body: &[u8]) -> Result<Response, AuthError> {
    let form: TokenForm = serde_urlencoded_from(body)?;
    if form.grant_type.as_deref() != Some("client_credentials") {
        return Err(AuthError::InvalidInput(
            "grant_type must be client_credentials",
        ));
    }
    let (client_id, client_secret) = match basic_credentials(headers) {
        Some(credentials) => credentials,
        None => (
            form.client_id.unwrap_or_default(),
            form.client_secret.unwrap_or_default(),
        ),
    };
    let audience = form
        .audience
        .ok_or(AuthError::InvalidInput("audience is required"))?;
    let scopes: Vec<String> = form
        .scope
        .unwrap_or_default()
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect();
    let token = auth.issue_service_token(&client_id, &client_secret, &audience, &scopes)?;
    let body = json!({
        "access_token": token.access_token,
        "token_type": "Bearer",
        "expires_in": token.expires_in.as_secs(),
        "scope": token.scopes.join(" "),
    });
    Ok(no_store(StatusCode::OK, Json(body)))
}

fn serde_urlencoded_from(body: &[u8]) -> Result<TokenForm, AuthError> {
    let mut form = TokenForm {
        grant_type: None,
        client_id: None,
        client_secret: None,
        audience: None,
        scope: None,
    };
    for (key, value) in url::form_urlencoded::parse(body) {
        let slot = match key.as_ref() {
            "grant_type" => &mut form.grant_type,
            "client_id" => &mut form.client_id,
            "client_secret" => &mut form.client_secret,
            "audience" => &mut form.audience,
            "scope" => &mut form.scope,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(AuthError::InvalidInput("a parameter is repeated"));
        }
    }
    Ok(form)
}

/// HTTP Basic client authentication (RFC 6749 §2.3.1: id and secret form-encoded first).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |part: &str| -> String {
        url::form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    let keys = auth.keys().jwks();
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(json!({ "keys": keys })),
    )
        .into_response()
}
