//! Page models: one askama template struct per screen (templates in `app/templates/`), and
//! small formatting helpers. Every value is HTML-escaped by askama unless marked `|safe`
//! (only the QR code's SVG, which this process generated).

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::i18n::Tr;

/// What every page shows around its content.
pub(crate) struct Chrome {
    /// The translator.
    pub(crate) t: Tr,
    /// The page title (already translated).
    pub(crate) title: String,
    /// Whether a profile is unlocked (navigation and Lock shown).
    pub(crate) unlocked: bool,
    /// Whether referral and consent screens are shown (not for ambassadors).
    pub(crate) cases: bool,
    /// This device's name.
    pub(crate) name: String,
    /// Connected to the relay.
    pub(crate) online: bool,
    /// A message to show on top (after an action).
    pub(crate) notice: Option<String>,
    /// An error to show on top.
    pub(crate) error: Option<String>,
    /// The navigation entry that is current.
    pub(crate) here: &'static str,
}

impl Chrome {
    /// Whether `entry` is the current navigation entry (for `aria-current`).
    pub(crate) fn is(&self, entry: &str) -> bool {
        self.here == entry
    }
}

/// Renders a template as an HTML response.
pub(crate) fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "This page could not be drawn. Report this.",
        )
            .into_response(),
    }
}

/// Unlock screen.
#[derive(Template)]
#[template(path = "unlock.html")]
pub(crate) struct Unlock {
    pub(crate) p: Chrome,
}

/// Create-profile screen.
#[derive(Template)]
#[template(path = "create.html")]
pub(crate) struct Create {
    pub(crate) p: Chrome,
    pub(crate) relay: String,
    pub(crate) pin: String,
    pub(crate) name: String,
    /// The store opened but holds no identity (a new store, or the duress passphrase).
    pub(crate) empty_store: bool,
}

/// One line of the home screen's "needs you now" list.
pub(crate) struct Todo {
    pub(crate) text: String,
    pub(crate) href: String,
}

/// Home.
#[derive(Template)]
#[template(path = "home.html")]
pub(crate) struct Home {
    pub(crate) p: Chrome,
    pub(crate) todo: Vec<Todo>,
    pub(crate) fingerprint: String,
}

/// One contact as lists show it.
pub(crate) struct ContactRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) org: String,
    pub(crate) role: String,
    pub(crate) verified: bool,
    pub(crate) changed: bool,
    pub(crate) revoked: bool,
    pub(crate) has_address: bool,
}

/// An organisation waiting to be trusted.
pub(crate) struct PendingOrg {
    pub(crate) root: String,
    pub(crate) fingerprint: String,
}

/// Chats list.
#[derive(Template)]
#[template(path = "chats.html")]
pub(crate) struct Chats {
    pub(crate) p: Chrome,
    pub(crate) contacts: Vec<ContactRow>,
}

/// One chat message.
pub(crate) struct ChatLine {
    pub(crate) seq: u64,
    pub(crate) outgoing: bool,
    pub(crate) text: String,
    pub(crate) when: String,
    /// Unix seconds when it disappears (0: never).
    pub(crate) expires_at: u64,
}

/// One conversation.
#[derive(Template)]
#[template(path = "chat.html")]
pub(crate) struct Chat {
    pub(crate) p: Chrome,
    pub(crate) contact: ContactRow,
    pub(crate) lines: Vec<ChatLine>,
}

/// Contacts: list, invite, accept, organisations to trust.
#[derive(Template)]
#[template(path = "contacts.html")]
pub(crate) struct Contacts {
    pub(crate) p: Chrome,
    pub(crate) contacts: Vec<ContactRow>,
    pub(crate) pending: Vec<PendingOrg>,
}

/// A new invitation.
#[derive(Template)]
#[template(path = "invite.html")]
pub(crate) struct Invite {
    pub(crate) p: Chrome,
    pub(crate) link: String,
    pub(crate) qr_svg: String,
    pub(crate) hours: u64,
}

/// The organisation fingerprint step before accepting an invitation.
#[derive(Template)]
#[template(path = "trust.html")]
pub(crate) struct Trust {
    pub(crate) p: Chrome,
    pub(crate) link: String,
    pub(crate) fingerprint: String,
}

/// Safety-number verification.
#[derive(Template)]
#[template(path = "verify.html")]
pub(crate) struct Verify {
    pub(crate) p: Chrome,
    pub(crate) contact: ContactRow,
    pub(crate) groups: Vec<String>,
    pub(crate) qr_svg: String,
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub(crate) p: Chrome,
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds.
pub(crate) fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An SVG QR code of `data`, or an empty string if it does not fit a QR code.
pub(crate) fn qr_svg(data: &[u8]) -> String {
    use qrcode::render::svg;
    match qrcode::QrCode::new(data) {
        Ok(code) => code
            .render::<svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build()
            // Inline in HTML: without the XML declaration.
            .split_once("<svg")
            .map(|(_, rest)| format!("<svg role=\"img\"{rest}"))
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_558_400 + 3_723), "2026-12-06 13:02 UTC");
    }

    #[test]
    fn qr_is_svg() {
        let svg = qr_svg(b"handover://invite#abc");
        assert!(svg.contains("<svg"));
        assert!(!svg.contains("<script"));
    }
}
