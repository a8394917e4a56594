//! API keys per environment: create (shown once), revoke.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use trigger_engine::ApiKeyKind;

use super::{back, Ctx};
use crate::auth::{urlencode, Session};
use crate::error::Error;
use crate::html::{self, esc, Nav};
use crate::Dash;

#[derive(Debug, Deserialize)]
pub(crate) struct KeysQuery {
    notice: Option<String>,
}

async fn render(
    dash: &Dash,
    ctx: &Ctx,
    notice: Option<&str>,
    revealed: Option<(&str, &str)>,
) -> Result<Response, Error> {
    let slug = ctx.slug();
    let keys = dash.engine().list_api_keys(Some(&ctx.env.id)).await?;
    let csrf = html::csrf_field(&ctx.session.csrf);
    let mut rows = String::new();
    for k in keys.iter().filter(|k| k.kind == ApiKeyKind::Secret).rev() {
        let state = match k.revoked_at {
            Some(at) => format!(
                "<span class=\"pill muted\">Revoked</span> <span class=\"small muted\">{}</span>",
                html::time(at)
            ),
            None => "<span class=\"pill ok\">Active</span>".to_string(),
        };
        let action = if k.revoked_at.is_none() {
            format!(
                "<form method=\"post\" action=\"/dashboard/{slug}/keys/{}/revoke\" data-confirm=\"Revoke this key? Anything using it stops working.\">{csrf}\
                 <button class=\"btn small danger\" type=\"submit\" aria-label=\"Revoke {name}\">Revoke</button></form>",
                urlencode(&k.id),
                name = esc(&k.name),
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr data-key=\"{id}\"><th scope=\"row\">{name}</th><td class=\"mono\">{prefix}…</td><td class=\"hide-sm\">{created}</td><td>{state}</td><td>{action}</td></tr>",
            id = esc(&k.id),
            name = esc(&k.name),
            prefix = esc(&k.display_prefix),
            created = html::time(k.created_at),
        );
    }
    let reveal = match revealed {
        Some((name, plain)) => format!(
            "<div class=\"reveal\" role=\"status\"><h2>New key “{}”</h2><p>Copy it now: it is stored hashed and <strong>will not be shown again</strong>.</p>\
             <div class=\"copy-row\"><label for=\"new-key\" class=\"sr-only\">New secret key</label><input id=\"new-key\" class=\"mono\" readonly value=\"{}\">\
             <button class=\"btn\" type=\"button\" data-copy=\"#new-key\">Copy</button></div>\
             <p class=\"small muted\">Use it as <code>TRIGGER_SECRET_KEY</code> for this environment.</p></div>",
            esc(name),
            esc(plain)
        ),
        None => String::new(),
    };
    let body = format!(
        "<div class=\"page-head\"><h1>API keys</h1></div>{notice}{reveal}\
         <p class=\"muted\">Secret keys of the <strong>{envl}</strong> environment. A key opens this environment only.</p>\
         <form method=\"post\" action=\"/dashboard/{slug}/keys\" class=\"inline card\">{csrf}<label for=\"key-name\">Name</label>\
         <input id=\"key-name\" name=\"name\" required placeholder=\"backend\" maxlength=\"100\"><button class=\"btn primary\" type=\"submit\">Create key</button></form>\
         <div class=\"table-wrap\"><table><caption class=\"sr-only\">Secret keys</caption><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Key</th><th scope=\"col\" class=\"hide-sm\">Created</th>\
         <th scope=\"col\">State</th><th scope=\"col\"><span class=\"sr-only\">Action</span></th></tr></thead><tbody>{rows}</tbody></table></div>",
        notice = html::notice(notice),
        envl = html::env_label(ctx.env.kind),
    );
    Ok(ctx.page("API keys", Nav::Keys, None, body))
}

/// `GET /dashboard/{env}/keys`.
pub(crate) async fn list(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    Query(q): Query<KeysQuery>,
) -> Result<Response, Error> {
    let ctx = Ctx::load(&dash, &slug, session).await?;
    render(&dash, &ctx, q.notice.as_deref(), None).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

/// `POST /dashboard/{env}/keys`: creates a key and shows it, once, in the response.
pub(crate) async fn create(
    State(dash): State<Dash>,
    Path(slug): Path<String>,
    session: Session,
    Form(form): Form<CreateForm>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let name = form.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::Invalid("name: 1 to 100 characters".into()));
    }
    let ctx = Ctx::load(&dash, &slug, session).await?;
    let (_, plain) = dash.engine().create_api_key(ApiKeyKind::Secret, Some(&ctx.env.id), name).await?;
    render(&dash, &ctx, None, Some((name, &plain))).await
}

/// `POST /dashboard/{env}/keys/{id}/revoke`.
pub(crate) async fn revoke(
    State(dash): State<Dash>,
    Path((slug, id)): Path<(String, String)>,
    session: Session,
    Form(form): Form<super::CsrfOnly>,
) -> Result<Response, Error> {
    session.check_csrf(&form.csrf)?;
    let (env, _) = dash.environment(&slug).await?;
    // Only this environment's keys are listed here, so only they may be revoked here.
    let keys = dash.engine().list_api_keys(Some(&env.id)).await?;
    if !keys.iter().any(|k| k.id == id) {
        return Err(Error::NotFound(format!("No key {id} in this environment")));
    }
    let key = dash.engine().revoke_api_key(&id).await?;
    if let Some(hook) = &dash.options().on_key_revoked {
        hook(&key.id);
    }
    Ok(back(&format!("/dashboard/{}/keys", env.kind.slug()), &format!("Key “{}” revoked.", key.name)))
}
