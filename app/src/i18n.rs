//! Interface texts from Project Fluent files (`app/locales/LANG/*.ftl`, embedded at build time
//! by `build.rs`). English is the reference language: a message missing in another language
//! falls back to English, and a message missing everywhere shows its id (never a panic).
//!
//! The page's language is the person's choice (the [`LANG_COOKIE`] cookie, set from the
//! language choice on the settings and unlock screens) if it names an embedded language, else
//! the best embedded language of the browser's `Accept-Language`, else English. Every language
//! names itself in its own `language-name` message, so the choice lists each language in its
//! own words and a new folder appears there without code.

use std::collections::HashMap;
use std::sync::Arc;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use unic_langid::LanguageIdentifier;

include!(concat!(env!("OUT_DIR"), "/locales.rs"));

/// The reference language.
pub(crate) const FALLBACK: &str = "en";

/// The cookie that remembers the person's language choice (a language tag, nothing else: it is
/// not a secret and holds no case content).
pub(crate) const LANG_COOKIE: &str = "handover_lang";

/// How long the browser keeps the language choice: a year, so it survives restarts of
/// `handover app` (whose session cookie does not).
pub(crate) const LANG_COOKIE_MAX_AGE_SECS: u64 = 365 * 24 * 60 * 60;

/// The message in which every language names itself (for the language choice).
const SELF_NAME: &str = "language-name";

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
    /// (tag, the language's name in itself), sorted by tag: the language choice.
    choices: Arc<Vec<(String, String)>>,
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
            // Left-to-right pages set `dir` and use <bdi> around user text, so Fluent's
            // isolation marks would only add invisible characters to copied text. On a
            // right-to-left page they are needed: a fingerprint's digit groups ("12345 67890")
            // inside an Arabic sentence would otherwise be shown in reverse group order.
            bundle.set_use_isolating(is_rtl(tag));
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
        let mut choices: Vec<(String, String)> = bundles
            .iter()
            .map(|(tag, bundle)| {
                let name = bundle
                    .get_message(SELF_NAME)
                    .and_then(|m| m.value())
                    .map(|p| {
                        let mut errors = Vec::new();
                        bundle.format_pattern(p, None, &mut errors).into_owned()
                    })
                    .unwrap_or_else(|| tag.clone());
                (tag.clone(), name)
            })
            .collect();
        choices.sort();
        Ok(Self {
            bundles,
            choices: Arc::new(choices),
        })
    }

    /// Whether `tag` is an embedded language (exactly as the language choice sends it).
    pub(crate) fn has(&self, tag: &str) -> bool {
        self.bundles.contains_key(tag)
    }

    /// The translator for the person's choice (the [`LANG_COOKIE`] value) if it is an embedded
    /// language, else for the best language of the `Accept-Language` header.
    pub(crate) fn choose(&self, chosen: Option<&str>, accept_language: Option<&str>) -> Tr {
        match chosen {
            Some(tag) if self.has(tag) => self.tr(tag),
            _ => self.pick(accept_language),
        }
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
            choices: Arc::clone(&self.choices),
        }
    }
}

/// One page's translator: `t("message-id")`, `t1("id", "arg", value)`.
#[derive(Clone)]
pub(crate) struct Tr {
    lang: String,
    bundle: Option<Arc<FluentBundle<FluentResource>>>,
    fallback: Option<Arc<FluentBundle<FluentResource>>>,
    choices: Arc<Vec<(String, String)>>,
}

impl Tr {
    /// Every embedded language as (tag, its name in itself), for the language choice.
    pub(crate) fn languages(&self) -> &[(String, String)] {
        &self.choices
    }

    /// `rtl` or `ltr` for any language tag (the language choice's options).
    pub(crate) fn dir_of(&self, tag: &str) -> &'static str {
        if is_rtl(tag) { "rtl" } else { "ltr" }
    }

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
    use std::collections::{BTreeMap, BTreeSet};

    use fluent_syntax::ast;

    /// Variable names (`{ $name }`) a pattern uses, select expressions included.
    fn placeables(pattern: &ast::Pattern<&str>, out: &mut BTreeSet<String>) {
        fn inline(e: &ast::InlineExpression<&str>, out: &mut BTreeSet<String>) {
            match e {
                ast::InlineExpression::VariableReference { id } => {
                    out.insert(id.name.to_owned());
                }
                ast::InlineExpression::FunctionReference { arguments, .. }
                | ast::InlineExpression::TermReference {
                    arguments: Some(arguments),
                    ..
                } => {
                    for a in &arguments.positional {
                        inline(a, out);
                    }
                    for a in &arguments.named {
                        inline(&a.value, out);
                    }
                }
                ast::InlineExpression::Placeable { expression } => expr(expression, out),
                _ => {}
            }
        }
        fn expr(e: &ast::Expression<&str>, out: &mut BTreeSet<String>) {
            match e {
                ast::Expression::Inline(i) => inline(i, out),
                ast::Expression::Select { selector, variants } => {
                    inline(selector, out);
                    for v in variants {
                        placeables(&v.value, out);
                    }
                }
            }
        }
        for element in &pattern.elements {
            if let ast::PatternElement::Placeable { expression } = element {
                expr(expression, out);
            }
        }
    }

    /// One message's shape: its value's placeables (None: no value) and its attributes'.
    type Shape = (Option<BTreeSet<String>>, BTreeMap<String, BTreeSet<String>>);

    /// Every message of Fluent sources by id, or the syntax errors.
    fn shapes(sources: &[&str]) -> Result<BTreeMap<String, Shape>, String> {
        let mut out = BTreeMap::new();
        for source in sources {
            let resource = fluent_syntax::parser::parse(*source)
                .map_err(|(_, errors)| format!("{} syntax errors", errors.len()))?;
            for entry in &resource.body {
                let ast::Entry::Message(m) = entry else {
                    continue;
                };
                let value = m.value.as_ref().map(|p| {
                    let mut set = BTreeSet::new();
                    placeables(p, &mut set);
                    set
                });
                let attributes = m
                    .attributes
                    .iter()
                    .map(|a| {
                        let mut set = BTreeSet::new();
                        placeables(&a.value, &mut set);
                        (a.id.name.to_owned(), set)
                    })
                    .collect();
                out.insert(m.id.name.to_owned(), (value, attributes));
            }
        }
        Ok(out)
    }

    /// What a language lacks or has wrong against English, one line per problem.
    fn compare(lang: &str, english: &[&str], other: &[&str]) -> Vec<String> {
        let en = match shapes(english) {
            Ok(s) => s,
            Err(e) => return vec![format!("en: {e}")],
        };
        let tr = match shapes(other) {
            Ok(s) => s,
            Err(e) => return vec![format!("{lang}: {e}")],
        };
        let mut problems = Vec::new();
        for (id, (value, attributes)) in &en {
            let Some((tr_value, tr_attributes)) = tr.get(id) else {
                problems.push(format!("{lang}: missing {id}"));
                continue;
            };
            if value != tr_value {
                problems.push(format!(
                    "{lang}: {id} has placeables {tr_value:?}, English {value:?}"
                ));
            }
            for (name, set) in attributes {
                match tr_attributes.get(name) {
                    None => problems.push(format!("{lang}: missing {id}.{name}")),
                    Some(s) if s != set => problems.push(format!(
                        "{lang}: {id}.{name} has placeables {s:?}, English {set:?}"
                    )),
                    Some(_) => {}
                }
            }
            for name in tr_attributes.keys() {
                if !attributes.contains_key(name) {
                    problems.push(format!("{lang}: {id}.{name} is not in English"));
                }
            }
        }
        for id in tr.keys() {
            if !en.contains_key(id) {
                problems.push(format!("{lang}: {id} is not in English"));
            }
        }
        problems
    }

    /// Fails when an English text is not translated into every embedded language (or a
    /// translation has an id English lacks, or other placeables), naming ids and languages.
    /// Re-run after adding English texts: `cargo test -p handover-app --lib
    /// every_language_has_every_english_message`.
    #[test]
    fn every_language_has_every_english_message() {
        let english = LOCALES
            .iter()
            .find(|(tag, _)| *tag == FALLBACK)
            .map(|(_, files)| *files)
            .unwrap();
        let mut problems = Vec::new();
        for (tag, files) in LOCALES {
            problems.extend(compare(tag, english, files));
        }
        assert!(
            problems.is_empty(),
            "{} translation problems:\n{}",
            problems.len(),
            problems.join("\n")
        );
        // The receipt languages are embedded (the completeness check covers them).
        for tag in ["ar", "uk", "fr", "es"] {
            assert!(LOCALES.iter().any(|(t, _)| *t == tag), "{tag} missing");
        }
    }

    #[test]
    fn the_completeness_check_names_what_is_missing_or_different() {
        let en = ["a = A { $x }\nb = B\n    .title = T { $y }\nc = C\n"];
        let fr = ["a = A { $z }\nb = B\n    .title = T\nd = D\n"];
        let problems = compare("fr", &en, &fr);
        assert_eq!(
            problems,
            vec![
                r#"fr: a has placeables Some({"z"}), English Some({"x"})"#.to_owned(),
                r#"fr: b.title has placeables {}, English {"y"}"#.to_owned(),
                "fr: missing c".to_owned(),
                "fr: d is not in English".to_owned(),
            ]
        );
        let select = ["a = { $n ->\n    [one] one\n   *[other] { $n } and { $m }\n}\n"];
        let en_a = ["a = A { $n } { $m }\n"];
        assert!(compare("fr", &en_a, &select).is_empty());
        assert_eq!(
            compare("fr", &en_a, &["a = {"]),
            vec!["fr: 1 syntax errors"]
        );
    }

    #[test]
    fn a_chosen_language_overrides_the_browser_and_names_itself() {
        let i18n = I18n::load().unwrap();
        let tr = i18n.choose(Some("ar"), Some("fr, en;q=0.5"));
        assert_eq!((tr.lang(), tr.dir()), ("ar", "rtl"));
        let tr = i18n.choose(Some("xx"), Some("fr-CA, en;q=0.5"));
        assert_eq!((tr.lang(), tr.dir()), ("fr", "ltr"));
        let tr = i18n.choose(None, Some("uk"));
        assert_eq!(tr.lang(), "uk");
        let names: Vec<_> = tr.languages().iter().map(|(_, n)| n.as_str()).collect();
        for name in ["العربية", "English", "Español", "Français", "Українська"] {
            assert!(names.contains(&name), "{name} not in {names:?}");
        }
    }

    #[test]
    fn placeables_are_isolated_on_right_to_left_pages_only() {
        let i18n = I18n::load().unwrap();
        let fp = "12345 67890";
        let ar = i18n.tr("ar").t1("home-fingerprint", "fingerprint", fp);
        assert!(ar.contains(&format!("\u{2068}{fp}\u{2069}")), "{ar}");
        let en = i18n.tr("en").t1("home-fingerprint", "fingerprint", fp);
        assert!(en.contains(fp) && !en.contains('\u{2068}'), "{en}");
    }

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
