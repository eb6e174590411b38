//! `overinterp human serve`: the study as a web app — a router of small handlers
//! over shared state (the manifest, the answer database, the admin token).
//!
//! Routes:
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /` | anyone | instructions, consent, start or continue with a code |
//! | `POST /start` | anyone | a new participant code, then their first image |
//! | `GET /continue?code=C` | participant | back to where `C` left off (clear page if unknown) |
//! | `GET /p/{code}` | participant | the next unanswered image, or the end page |
//! | `POST /p/{code}/answer` | participant | one answer (`trial`, `choice`, `rt_ms`) |
//! | `GET /img/{id}.png` | anyone | a trial PNG named in the manifest, nothing else |
//! | `GET/POST /admin/login`, `POST /admin/logout` | owner | token → cookie |
//! | `GET /admin`, `GET /admin/results` | owner | progress per participant; all answers as CSV |
//!
//! Limits: request bodies over [`MAX_BODY`] bytes get 413, requests slower than
//! [`REQUEST_TIMEOUT`] get 408. Files are served only by manifest lookup of a
//! 16-hex-digit name, so no request can reach a path outside the study's images.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Form, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::db::{AnswerDb, Submitted, DB_FILE};
use super::manifest::{is_trial_id, StudyManifest, TrialRef, CONSENT_FILE, IMAGES_DIR};
use super::sequence::sequence;
use super::{pages, HumanError};

/// Largest request body accepted (an answer is well under 100 bytes).
pub const MAX_BODY: usize = 4096;
/// Longest a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// File name of the admin token inside a study directory.
pub const TOKEN_FILE: &str = "admin-token";
/// The admin session cookie.
pub const COOKIE: &str = "overinterp_admin";
/// Characters of participant codes: no 0/O, 1/I/L look-alikes.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Length of a participant code.
pub const CODE_LEN: usize = 8;

/// Everything the handlers share.
pub struct AppState {
    /// The study (labels and predictions stay here, server side).
    pub study: StudyManifest,
    /// The study directory (images are read from `images/`).
    pub dir: PathBuf,
    /// Trial id → (image, fraction).
    pub trials: HashMap<String, TrialRef>,
    /// The answer log; one writer at a time.
    pub db: Mutex<AnswerDb>,
    /// The admin token.
    pub admin_token: String,
    /// The owner's consent text.
    pub consent: String,
    /// Set `Secure` on the admin cookie (the app is behind HTTPS).
    pub secure_cookie: bool,
}

/// Options of `serve`.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Mark the admin cookie `Secure` (only sent over HTTPS, e.g. behind a TLS proxy).
    pub secure_cookie: bool,
    /// The public base URL printed for participants (default: the listen address).
    pub public_url: Option<String>,
}

impl AppState {
    /// Loads the study, opens (or creates) its answer database and admin token.
    pub fn open(dir: &Path, opts: &ServeOptions) -> Result<Self, HumanError> {
        let study = StudyManifest::load(dir)?;
        let consent_path = dir.join(CONSENT_FILE);
        let consent = match std::fs::read_to_string(&consent_path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(HumanError::io(&consent_path, e)),
        };
        let db = AnswerDb::open(&dir.join(DB_FILE))?;
        Ok(Self {
            trials: study.trial_index(),
            study,
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            admin_token: admin_token(dir)?,
            consent,
            secure_cookie: opts.secure_cookie,
        })
    }
}

/// Reads `STUDY/admin-token`, creating it (mode 0600, 128 random bits) if missing,
/// so the token survives restarts.
pub fn admin_token(dir: &Path) -> Result<String, HumanError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => return Ok(t.trim().to_string()),
        Ok(_) => {
            return Err(HumanError::BadFile {
                path,
                reason: "admin token is shorter than 16 characters; delete the file for a new one"
                    .into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HumanError::io(&path, e)),
    }
    let token = hex::encode(super::os_random(16)?);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HumanError::io(&path, e))?;
        f.write_all(format!("{token}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| HumanError::io(&path, e))?;
    }
    Ok(token)
}

/// The router over `state`, with body limit, timeout and security headers.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(welcome))
        .route("/start", post(start))
        .route("/continue", get(continue_with_code))
        .route("/p/{code}", get(participant))
        .route("/p/{code}/answer", post(answer))
        .route("/img/{file}", get(image))
        .route("/admin", get(admin_page))
        .route("/admin/results", get(admin_results))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(limits_and_headers))
}

/// Binds `listen`, prints the participants' and the admin URL, and serves until
/// SIGINT or SIGTERM.
pub fn run(dir: &Path, listen: &str, opts: &ServeOptions) -> Result<(), HumanError> {
    let state = Arc::new(AppState::open(dir, opts)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HumanError::Invalid(format!("starting the async runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| HumanError::Invalid(format!("--listen {listen}: {e}")))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| HumanError::Invalid(format!("--listen {listen}: {e}")))?;
        let base = opts
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let base = base.trim_end_matches('/');
        println!("participants: {base}/");
        println!("admin:        {base}/admin/login");
        println!("admin token:  {}", state.admin_token);
        println!("  (also in {}; or send `Authorization: Bearer TOKEN`, e.g. curl -H \"Authorization: Bearer $(cat {0})\" {base}/admin/results)",
            dir.join(TOKEN_FILE).display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, study = %dir.display(), "serving the study");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| HumanError::Invalid(format!("serving on {addr}: {e}")))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Request timeout and headers every response carries: no caching of pages, no
/// MIME sniffing, no framing, no referrer (codes are in URLs).
async fn limits_and_headers(req: Request, next: Next) -> Response {
    let is_image = req.uri().path().starts_with("/img/");
    let mut resp = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long").into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    if !is_image {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A failure inside a handler: logged, and a plain 500 page.
struct Internal(String);

impl From<HumanError> for Internal {
    fn from(e: HumanError) -> Self {
        Internal(e.to_string())
    }
}

impl IntoResponse for Internal {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "request failed");
        html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::message(
                "Something went wrong",
                "The server could not store or read your progress. Please try again in a moment; nothing you answered before is lost.",
                ("/", "Start page"),
            ),
        )
    }
}

/// Runs `f` with the database on a blocking thread (SQLite fsyncs block).
async fn with_db<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&mut AnswerDb, &AppState) -> Result<T, HumanError> + Send + 'static,
) -> Result<T, Internal> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut db = state
            .db
            .lock()
            .map_err(|_| Internal("answer database lock poisoned".into()))?;
        f(&mut db, &state).map_err(Internal::from)
    })
    .await
    .map_err(|e| Internal(format!("database task failed: {e}")))?
}

/// Upper-cases and strips spaces and dashes; `None` unless 8 code characters.
pub fn normalize_code(raw: &str) -> Option<String> {
    let code: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

fn new_code() -> Result<String, HumanError> {
    let bytes = super::os_random(CODE_LEN * 2)?;
    Ok(bytes
        .chunks(2)
        .map(|b| {
            let v = u16::from_le_bytes([b[0], b[1]]) as usize % CODE_ALPHABET.len();
            CODE_ALPHABET[v] as char
        })
        .collect())
}

fn study_info(state: &AppState) -> (Vec<String>, usize) {
    let names = state
        .study
        .classes
        .iter()
        .map(|&c| state.study.class_names[c as usize].clone())
        .collect();
    (names, state.study.images.len())
}

async fn welcome(State(state): State<Arc<AppState>>) -> Response {
    let (names, images) = study_info(&state);
    html(
        StatusCode::OK,
        pages::welcome(
            &pages::StudyInfo {
                images,
                fractions: &state.study.fractions,
                class_names: &names,
                consent: &state.consent,
            },
            None,
        ),
    )
}

async fn start(State(state): State<Arc<AppState>>) -> Result<Response, Internal> {
    let code = with_db(&state, |db, _| loop {
        let code = new_code()?;
        if db.add_participant(&code)? {
            return Ok(code);
        }
    })
    .await?;
    tracing::info!(code = %code, "new participant");
    Ok(Redirect::to(&format!("/p/{code}")).into_response())
}

#[derive(Deserialize)]
struct CodeQuery {
    #[serde(default)]
    code: String,
}

async fn continue_with_code(
    State(state): State<Arc<AppState>>,
    Query(q): Query<CodeQuery>,
) -> Result<Response, Internal> {
    let Some(code) = normalize_code(&q.code) else {
        return Ok(html(
            StatusCode::NOT_FOUND,
            pages::unknown_code(q.code.trim()),
        ));
    };
    let known = {
        let code = code.clone();
        with_db(&state, move |db, _| db.has_participant(&code)).await?
    };
    Ok(if known {
        Redirect::to(&format!("/p/{code}")).into_response()
    } else {
        html(StatusCode::NOT_FOUND, pages::unknown_code(&code))
    })
}

/// The next image of `code`, or the end page; records when it was first shown.
async fn participant(
    State(state): State<Arc<AppState>>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Response, Internal> {
    let Some(code) = normalize_code(&raw) else {
        return Ok(html(StatusCode::NOT_FOUND, pages::unknown_code(&raw)));
    };
    if code != raw {
        return Ok(Redirect::to(&format!("/p/{code}")).into_response());
    }
    let page = with_db(&state, move |db, st| {
        if !db.has_participant(&code)? {
            return Ok(html(StatusCode::NOT_FOUND, pages::unknown_code(&code)));
        }
        let total = st.study.trials_per_participant();
        let answered = db.answered(&code)? as usize;
        if answered >= total {
            return Ok(html(StatusCode::OK, pages::done(&code, total)));
        }
        let seq = sequence(&st.study, &code);
        let at = seq[answered];
        let trial = st.study.trial(at);
        db.mark_shown(&code, &trial.id)?;
        let choices: Vec<(i64, String)> = st
            .study
            .classes
            .iter()
            .map(|&c| (c, st.study.class_names[c as usize].clone()))
            .collect();
        let per_batch = st.study.images.len();
        Ok(html(
            StatusCode::OK,
            pages::trial(&pages::TrialView {
                code: &code,
                position: answered,
                total,
                batch: at.fraction,
                batches: st.study.fractions.len(),
                fraction: st.study.fractions[at.fraction],
                first_of_batch: answered.is_multiple_of(per_batch),
                trial_id: &trial.id,
                choices: &choices,
            }),
        ))
    })
    .await?;
    Ok(page)
}

#[derive(Deserialize)]
struct AnswerForm {
    #[serde(default)]
    trial: String,
    #[serde(default)]
    choice: String,
    #[serde(default)]
    rt_ms: String,
}

/// Stores one answer: only for the participant's next image (or an identical
/// re-submit of a stored one), only a class the study offers.
async fn answer(
    State(state): State<Arc<AppState>>,
    UrlPath(raw): UrlPath<String>,
    Form(form): Form<AnswerForm>,
) -> Result<Response, Internal> {
    let Some(code) = normalize_code(&raw) else {
        return Ok(html(StatusCode::NOT_FOUND, pages::unknown_code(&raw)));
    };
    let back = format!("/p/{code}");
    let bad = |text: &str| {
        html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "That answer was not accepted",
                text,
                (&back, "Continue with your images"),
            ),
        )
    };
    let Some(at) = is_trial_id(&form.trial)
        .then(|| state.trials.get(&form.trial).copied())
        .flatten()
    else {
        return Ok(bad(
            "The answer names an image that is not part of your study.",
        ));
    };
    let choice = match form.choice.parse::<i64>() {
        Ok(c) if state.study.classes.contains(&c) => c,
        _ => return Ok(bad("The answer is not one of the offered classes.")),
    };
    let rt = form
        .rt_ms
        .parse::<i64>()
        .ok()
        .filter(|ms| (0..=3_600_000).contains(ms));
    let trial = form.trial.clone();
    let outcome = with_db(&state, move |db, st| {
        if !db.has_participant(&code)? {
            return Ok(None);
        }
        let position = sequence(&st.study, &code)
            .iter()
            .position(|t| *t == at)
            .expect("every trial is in every sequence") as i64;
        db.submit(&code, &trial, position, choice, rt).map(Some)
    })
    .await?;
    Ok(match outcome {
        None => html(StatusCode::NOT_FOUND, pages::unknown_code(&raw)),
        Some(Submitted::Recorded | Submitted::Duplicate) => Redirect::to(&back).into_response(),
        Some(Submitted::Conflict { .. }) => html(
            StatusCode::CONFLICT,
            pages::message(
                "Already answered",
                "You already answered this image; your first answer stands.",
                (&back, "Continue with the next image"),
            ),
        ),
        Some(Submitted::NotNext { .. }) => html(
            StatusCode::CONFLICT,
            pages::message(
                "Not your current image",
                "Answers are taken in order, for the image you are shown.",
                (&back, "Show my current image"),
            ),
        ),
    })
}

/// A trial PNG, looked up by name in the manifest: anything else is 404.
async fn image(
    State(state): State<Arc<AppState>>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, Internal> {
    let id = file.strip_suffix(".png").unwrap_or("");
    if !is_trial_id(id) || !state.trials.contains_key(id) {
        return Ok(not_found().await);
    }
    let path = state.dir.join(IMAGES_DIR).join(format!("{id}.png"));
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| Internal(format!("{}: {e}", path.display())))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=86400"),
        ],
        Body::from(bytes),
    )
        .into_response())
}

async fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page.", ("/", "Start page")),
    )
}

/// Constant-time equality of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The admin token presented: `Authorization: Bearer T`, or the login cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// `Ok` for the owner; 401 without a token, 403 with a wrong one.
#[allow(clippy::result_large_err)]
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match presented_token(headers) {
        None => Err((
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"overinterp study admin\"",
                ),
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            ],
            pages::message(
                "Log in first",
                "This page needs the study's admin token.",
                ("/admin/login", "Log in"),
            ),
        )
            .into_response()),
        Some(t) if same_token(&t, &state.admin_token) => Ok(()),
        Some(_) => Err(html(
            StatusCode::FORBIDDEN,
            pages::message(
                "Wrong admin token",
                "The admin token sent does not match this study's.",
                ("/admin/login", "Log in again"),
            ),
        )),
    }
}

fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

async fn admin_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Internal> {
    if let Err(r) = require_admin(&state, &headers) {
        return Ok(r);
    }
    let rows = with_db(&state, |db, _| db.progress()).await?;
    let rows: Vec<pages::ProgressRow> = rows
        .into_iter()
        .map(|p| pages::ProgressRow {
            code: p.code,
            started: utc(p.created_ms),
            answered: p.answered,
            last: p.last_ms.map(utc).unwrap_or_else(|| "–".into()),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        pages::admin(&rows, state.study.trials_per_participant()),
    ))
}

/// The header of the results CSV.
pub const CSV_HEADER: &str =
    "participant,position,trial,image_index,fraction,store,label,choice,correct,client_rt_ms,server_rt_ms,answered_ms";

async fn admin_results(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Internal> {
    if let Err(r) = require_admin(&state, &headers) {
        return Ok(r);
    }
    let answers = with_db(&state, |db, _| db.answers()).await?;
    let mut csv = format!("{CSV_HEADER}\n");
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    for a in answers {
        let Some(at) = state.trials.get(&a.trial_id) else {
            continue;
        };
        let image = &state.study.images[at.image];
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            a.code,
            a.position,
            a.trial_id,
            image.index,
            state.study.fractions[at.fraction],
            image.store,
            image.label,
            a.choice,
            u8::from(a.choice == image.label),
            opt(a.client_rt_ms),
            opt(a.server_rt_ms),
            a.answered_ms
        ));
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"responses.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

async fn login_page() -> Response {
    html(StatusCode::OK, pages::admin_login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(state): State<Arc<AppState>>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    if !same_token(token, &state.admin_token) {
        return html(
            StatusCode::FORBIDDEN,
            pages::admin_login(Some("That is not this study's admin token.")),
        );
    }
    let secure = if state.secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/admin{secure}");
    let mut resp = Redirect::to("/admin").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout() -> Response {
    let mut resp = Redirect::to("/admin/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "overinterp_admin=; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=0",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalize_and_reject_foreign_characters() {
        assert_eq!(normalize_code(" k7qf-3mza ").as_deref(), Some("K7QF3MZA"));
        assert_eq!(normalize_code("K7QF3MZ"), None);
        assert_eq!(normalize_code("K7QF3MZ0"), None); // 0 is not in the alphabet
        assert_eq!(normalize_code("../../etc"), None);
        let c = new_code().unwrap();
        assert_eq!(normalize_code(&c), Some(c));
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // 2024-02-29T12:34:56Z = 1709210096 s (date -u -d @1709210096).
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
    }
}
