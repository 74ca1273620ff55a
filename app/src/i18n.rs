//! Interface texts from Project Fluent files (`app/locales/LANG/*.ftl`, embedded at build time
//! by `build.rs`). English is the reference language: a message missing in another language
//! falls back to English, and a message missing everywhere shows its id (never a panic).

use std::collections::HashMap;
use std::sync::Arc;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use unic_langid::LanguageIdentifier;

include!(concat!(env!("OUT_DIR"), "/locales.rs"));

/// The reference language.
pub(crate) const FALLBACK: &str = "en";

/// Languages written right to left (the receipt languages include Arabic).
const RTL: &[&str] = &["ar", "fa", "he", "ur", "ps", "ku", "ckb"];

/// Whether a language tag is written right to left.
pub(crate) fn is_rtl(tag: &str) -> bool {
    let primary = tag.split(['-', '_']).next().unwrap_or(tag);
    RTL.contains(&primary)
}

/// Every embedded language's bundle.
pub(crate) struct I18n {
    bundles: HashMap<String, Arc<FluentBundle<FluentResource>>>,
}

impl I18n {
    /// Parses every embedded Fluent file. A file with syntax errors is a build-time mistake
    /// reported here, so `handover app` refuses to start rather than showing broken texts.
    pub(crate) fn load() -> Result<Self, String> {
        let mut bundles = HashMap::new();
        for (tag, files) in LOCALES {
            let id: LanguageIdentifier = tag
                .parse()
                .map_err(|_| format!("locale folder {tag:?} is not a language tag"))?;
            let mut bundle = FluentBundle::new_concurrent(vec![id]);
            // Our pages set `dir` and use <bdi> around user text; Fluent's isolation marks
            // would only add invisible characters to copied text.
            bundle.set_use_isolating(false);
            for source in *files {
                let resource = FluentResource::try_new((*source).to_owned())
                    .map_err(|(_, errs)| format!("locale {tag}: {} syntax errors", errs.len()))?;
                bundle
                    .add_resource(resource)
                    .map_err(|errs| format!("locale {tag}: {} duplicate messages", errs.len()))?;
            }
            bundles.insert((*tag).to_owned(), Arc::new(bundle));
        }
        if !bundles.contains_key(FALLBACK) {
            return Err("the English locale (app/locales/en) is missing".to_owned());
        }
        Ok(Self { bundles })
    }

    /// The translator for the best language of an `Accept-Language` header.
    pub(crate) fn pick(&self, accept_language: Option<&str>) -> Tr {
        let wanted = accept_language
            .unwrap_or("")
            .split(',')
            .filter_map(|part| part.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        let mut lang = FALLBACK.to_owned();
        for tag in wanted {
            let primary = tag.split('-').next().unwrap_or("").to_owned();
            if self.bundles.contains_key(&tag) {
                lang = tag;
                break;
            }
            if self.bundles.contains_key(&primary) {
                lang = primary;
                break;
            }
        }
        self.tr(&lang)
    }

    /// The translator for one language (English if it is not embedded).
    pub(crate) fn tr(&self, lang: &str) -> Tr {
        let fallback = self.bundles.get(FALLBACK).cloned();
        let bundle = self.bundles.get(lang).cloned();
        let lang = if bundle.is_some() { lang } else { FALLBACK };
        Tr {
            lang: lang.to_owned(),
            bundle,
            fallback,
        }
    }
}

/// One page's translator: `t("message-id")`, `t1("id", "arg", value)`.
#[derive(Clone)]
pub(crate) struct Tr {
    lang: String,
    bundle: Option<Arc<FluentBundle<FluentResource>>>,
    fallback: Option<Arc<FluentBundle<FluentResource>>>,
}

impl Tr {
    /// The language tag of the page.
    pub(crate) fn lang(&self) -> &str {
        &self.lang
    }

    /// `rtl` or `ltr`, for the page's `dir` attribute.
    pub(crate) fn dir(&self) -> &'static str {
        if is_rtl(&self.lang) { "rtl" } else { "ltr" }
    }

    fn format(&self, id: &str, args: Option<&FluentArgs<'_>>) -> String {
        for bundle in [&self.bundle, &self.fallback].into_iter().flatten() {
            if let Some(pattern) = bundle.get_message(id).and_then(|m| m.value()) {
                let mut errors = Vec::new();
                return bundle
                    .format_pattern(pattern, args, &mut errors)
                    .into_owned();
            }
        }
        id.to_owned()
    }

    /// The text of message `id`.
    pub(crate) fn t(&self, id: &str) -> String {
        self.format(id, None)
    }

    /// The text of message `id` with one argument.
    pub(crate) fn t1(&self, id: &str, name: &str, value: impl std::fmt::Display) -> String {
        let mut args = FluentArgs::new();
        args.set(name.to_owned(), FluentValue::from(value.to_string()));
        self.format(id, Some(&args))
    }

    /// The text of message `id` with several arguments.
    pub(crate) fn tn(&self, id: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
        let mut args = FluentArgs::new();
        for (name, value) in values {
            args.set((*name).to_owned(), FluentValue::from(value.to_string()));
        }
        self.format(id, Some(&args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_loads_and_unknown_ids_show_their_id() {
        let i18n = I18n::load().unwrap();
        let tr = i18n.pick(Some("xx-YY, en;q=0.5"));
        assert_eq!(tr.lang(), "en");
        assert_eq!(tr.dir(), "ltr");
        assert_eq!(tr.t("no-such-message-id"), "no-such-message-id");
        assert_ne!(tr.t("unlock-title"), "unlock-title");
    }

    #[test]
    fn arabic_and_persian_are_right_to_left() {
        assert!(is_rtl("ar"));
        assert!(is_rtl("ar-EG"));
        assert!(is_rtl("fa"));
        assert!(!is_rtl("uk"));
        assert!(!is_rtl("en"));
    }
}
