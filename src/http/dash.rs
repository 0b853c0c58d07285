//! The operator dashboard: one page, its script and its stylesheet, built into the binary.
//! Everything it shows it reads from the JSON routes (with the admin password the operator
//! types in), so the page itself is public and holds no data.

use super::routes::Ctx;
use super::server::{Req, Resp, with_header};
use tiny_http::Response;

const PAGE: &str = include_str!("dash/index.html");
const SCRIPT: &str = include_str!("dash/app.js");
const STYLE: &str = include_str!("dash/app.css");

/// Scripts and styles only from the relay itself, no inline code, no framing, no forms posting
/// elsewhere: a script injected through data the page shows could not run or phone home.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: String, content_type: &str) -> Resp {
    let r = with_header(
        Response::from_data(body.into_bytes()),
        "Content-Type",
        content_type,
    );
    let r = with_header(r, "Content-Security-Policy", CSP);
    let r = with_header(r, "X-Content-Type-Options", "nosniff");
    let r = with_header(r, "Referrer-Policy", "no-referrer");
    let r = with_header(r, "X-Frame-Options", "DENY");
    with_header(r, "Cache-Control", "no-cache")
}

/// The page links its assets relative to where it was loaded, so it works at `/dash` and at
/// `/dash/`, and behind a reverse proxy that serves the relay under a path prefix.
fn page(assets: &str) -> Resp {
    asset(
        PAGE.replace("{{assets}}", assets),
        "text/html; charset=utf-8",
    )
}

pub(crate) fn page_bare(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(page("dash/"))
}

pub(crate) fn page_slash(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(page(""))
}

pub(crate) fn script(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(asset(SCRIPT.to_owned(), "text/javascript; charset=utf-8"))
}

pub(crate) fn style(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(asset(STYLE.to_owned(), "text/css; charset=utf-8"))
}
