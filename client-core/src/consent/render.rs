//! The survivor's copy of a consent receipt, in plain text, in their language.
//!
//! The copy says what is shared, with whom, why, for how long, and how to withdraw; it shows
//! the state of the consent, any withheld sections, whether an interpreter was used, and every
//! sharing without consent (override) that concerned the person. It honours the person's
//! preferred term (victim, survivor or none) and, if given, their preferred name.

use handover_proto::e2e::v1 as wire;

use super::SignedReceipt;

/// Languages the survivor's copy is written in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Language {
    /// English.
    English,
    /// Arabic (Modern Standard Arabic).
    Arabic,
    /// Ukrainian.
    Ukrainian,
    /// French.
    French,
    /// Spanish.
    Spanish,
}

impl Language {
    /// Every supported language.
    pub const ALL: [Language; 5] = [
        Language::English,
        Language::Arabic,
        Language::Ukrainian,
        Language::French,
        Language::Spanish,
    ];

    /// From a BCP 47 tag ("en", "ar-SY", "uk", "fr-BE", "es-419"); `None` if unsupported.
    pub fn from_tag(tag: &str) -> Option<Self> {
        let primary = tag.split(['-', '_']).next()?.to_ascii_lowercase();
        Some(match primary.as_str() {
            "en" => Self::English,
            "ar" => Self::Arabic,
            "uk" => Self::Ukrainian,
            "fr" => Self::French,
            "es" => Self::Spanish,
            _ => return None,
        })
    }

    /// The BCP 47 primary tag.
    pub fn tag(self) -> &'static str {
        match self {
            Self::English => "en",
            Self::Arabic => "ar",
            Self::Ukrainian => "uk",
            Self::French => "fr",
            Self::Spanish => "es",
        }
    }
}

/// The word the person chose for themselves (Socialhut practice): it is used where the copy
/// refers to the person's situation, and no label is used when they chose none.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PreferredTerm {
    /// "Victim".
    Victim,
    /// "Survivor".
    Survivor,
    /// No label.
    #[default]
    None,
}

impl PreferredTerm {
    /// From the identity section's `preferred_term` ("victim", "survivor", anything else =
    /// none).
    pub fn from_text(text: &str) -> Self {
        match text.trim().to_ascii_lowercase().as_str() {
            "victim" => Self::Victim,
            "survivor" => Self::Survivor,
            _ => Self::None,
        }
    }
}

/// A sharing without consent that concerned the person (from a referral offer with an
/// override); the survivor's copy lists it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OverrideNotice {
    /// The receiving organisation.
    pub org_name: String,
    /// The legal basis recorded.
    pub legal_basis: String,
    /// When, Unix seconds.
    pub at: u64,
    /// Which sections were shared.
    pub sections: Vec<wire::Section>,
}

impl OverrideNotice {
    /// The notice for an offer that relies on an override (`None` if it relies on consent).
    pub fn from_offer(offer: &wire::ReferralOffer) -> Option<Self> {
        let Some(wire::consent_ref::Basis::Override(o)) =
            offer.consent.as_ref().and_then(|c| c.basis.as_ref())
        else {
            return None;
        };
        Some(Self {
            org_name: offer
                .to
                .as_ref()
                .map(|p| p.org_name.clone())
                .unwrap_or_default(),
            legal_basis: o.legal_basis.clone(),
            at: offer.created_at,
            sections: offer.sections_included().collect(),
        })
    }
}

/// What to render.
#[derive(Clone, Copy)]
pub struct SurvivorCopy<'a> {
    /// The receipt.
    pub receipt: &'a SignedReceipt,
    /// The language to write in.
    pub language: Language,
    /// The person's preferred name, if they want it on their copy.
    pub preferred_name: Option<&'a str>,
    /// The person's preferred term.
    pub preferred_term: PreferredTerm,
    /// Sharing without consent to tell the person about.
    pub overrides: &'a [OverrideNotice],
}

impl std::fmt::Debug for SurvivorCopy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SurvivorCopy")
            .field("receipt", &self.receipt.id())
            .field("language", &self.language)
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}

struct Texts {
    title: &'static str,
    greeting: &'static str,
    intro: &'static str,
    shared: &'static str,
    with_whom: &'static str,
    for_services: &'static str,
    why: &'static str,
    how_long: &'static str,
    how_long_open: &'static str,
    valid_until: &'static str,
    valid_open: &'static str,
    withheld: &'static str,
    withheld_all: &'static str,
    onward_no: &'static str,
    onward_yes: &'static str,
    withdraw_heading: &'static str,
    withdraw_text: &'static str,
    status_withdrawn: &'static str,
    status_expired: &'static str,
    status_invalidated: &'static str,
    status_refused: &'static str,
    override_heading: &'static str,
    override_line: &'static str,
    interpreter: &'static str,
    receipt_no: &'static str,
    minor_by_carer: &'static str,
    minor_assent_given: &'static str,
    minor_assent_refused: &'static str,
    term_survivor: &'static str,
    term_victim: &'static str,
    term_none: &'static str,
}

const EN: Texts = Texts {
    title: "Your consent record",
    greeting: "Hello {name}.",
    intro: "This is your copy of what you agreed to on {date}. It is kept by {controllers}.",
    shared: "What will be shared:",
    with_whom: "Who it will be shared with:",
    for_services: "for: {services}",
    why: "Why:",
    how_long: "How long: they may keep it for up to {days}, and then they must delete it.",
    how_long_open: "How long: only for as long as it is needed to support you.",
    valid_until: "This consent is valid until {date}.",
    valid_open: "This consent is valid until you withdraw it.",
    withheld: "Never shared with {whom}: {section}",
    withheld_all: "anyone",
    onward_no: "They may not pass your information on to anyone else.",
    onward_yes: "They may pass it on to others only as you agreed.",
    withdraw_heading: "How to withdraw:",
    withdraw_text: "You can change your mind at any time, without giving a reason. It will not change the support you receive.",
    status_withdrawn: "Status: this consent was withdrawn on {date}. Everyone who received your information has been asked to delete it.",
    status_expired: "Status: this consent ended on {date}. Everyone who received your information has been asked to delete it.",
    status_invalidated: "Status: this consent was cancelled on {date}. Everyone who received your information has been asked to delete it.",
    status_refused: "Status: you said no on {date}. Nothing is shared.",
    override_heading: "Shared without your consent:",
    override_line: "On {date}, {org} received: {sections}. Legal basis: {basis}. You have the right to ask about this.",
    interpreter: "An interpreter helped during the conversation (language: {language}).",
    receipt_no: "Receipt number: {id}",
    minor_by_carer: "Because you are under 18, your parent, guardian or carer was asked for consent too.",
    minor_assent_given: "You agreed to this yourself.",
    minor_assent_refused: "You said no to this yourself. Your answer is recorded, and nothing is shared because of this consent.",
    term_survivor: "You decide what happens with your information: that is the right of every survivor.",
    term_victim: "You decide what happens with your information: that is the right of every victim of crime.",
    term_none: "You decide what happens with your information.",
};

const AR: Texts = Texts {
    title: "سجل موافقتك",
    greeting: "مرحبًا {name}.",
    intro: "هذه نسختك مما وافقت عليه بتاريخ {date}. يحتفظ بهذا السجل: {controllers}.",
    shared: "المعلومات التي ستتم مشاركتها:",
    with_whom: "الجهات التي ستتلقى المعلومات:",
    for_services: "من أجل: {services}",
    why: "السبب:",
    how_long: "المدة: يمكنهم الاحتفاظ بالمعلومات لمدة أقصاها ({days})، ثم يجب عليهم حذفها.",
    how_long_open: "المدة: فقط طوال الفترة اللازمة لتقديم الدعم لك.",
    valid_until: "هذه الموافقة سارية حتى {date}.",
    valid_open: "هذه الموافقة سارية إلى حين سحبها.",
    withheld: "لا تتم مشاركته أبدًا مع {whom}: {section}",
    withheld_all: "أي جهة",
    onward_no: "لا يجوز لهم نقل معلوماتك إلى أي جهة أخرى.",
    onward_yes: "يجوز لهم مشاركتها مع جهات أخرى فقط وفق ما تم الاتفاق عليه معك.",
    withdraw_heading: "كيفية سحب الموافقة:",
    withdraw_text: "يمكنك تغيير رأيك في أي وقت، دون ذكر أي سبب. ولن يؤثر ذلك على الدعم المقدَّم لك.",
    status_withdrawn: "الحالة: تم سحب هذه الموافقة بتاريخ {date}. وطُلب من كل جهة تلقت معلوماتك حذفها.",
    status_expired: "الحالة: انتهت مدة هذه الموافقة بتاريخ {date}. وطُلب من كل جهة تلقت معلوماتك حذفها.",
    status_invalidated: "الحالة: أُلغيت هذه الموافقة بتاريخ {date}. وطُلب من كل جهة تلقت معلوماتك حذفها.",
    status_refused: "الحالة: تم تسجيل رفضك بتاريخ {date}. لن تتم مشاركة أي معلومات.",
    override_heading: "معلومات تمت مشاركتها دون موافقتك:",
    override_line: "بتاريخ {date}، تلقت {org} ما يلي: {sections}. الأساس القانوني: {basis}. يحق لك الاستفسار عن ذلك.",
    interpreter: "ساعد مترجم خلال المحادثة (اللغة: {language}).",
    receipt_no: "رقم الإيصال: {id}",
    minor_by_carer: "لأن عمرك أقل من 18 عامًا، طُلبت الموافقة أيضًا من والدك أو ولي أمرك أو الشخص الذي يرعاك.",
    minor_assent_given: "لقد وافقت على ذلك بنفسك.",
    minor_assent_refused: "لقد رفضت ذلك بنفسك. تم تسجيل إجابتك، ولن تتم مشاركة أي شيء بناءً على هذه الموافقة.",
    term_survivor: "أنت من يقرر ما يحدث لمعلوماتك، وهذا حق لكل الناجين والناجيات.",
    term_victim: "أنت من يقرر ما يحدث لمعلوماتك، وهذا حق لكل ضحايا الجرائم.",
    term_none: "أنت من يقرر ما يحدث لمعلوماتك.",
};

const UK: Texts = Texts {
    title: "Запис про вашу згоду",
    greeting: "Вітаємо, {name}.",
    intro: "Це ваша копія того, на що ви погодилися {date}. Запис зберігає: {controllers}.",
    shared: "Яку інформацію буде передано:",
    with_whom: "Кому її буде передано:",
    for_services: "для: {services}",
    why: "Мета:",
    how_long: "Як довго: її можна зберігати не довше ніж {days}, після чого її потрібно видалити.",
    how_long_open: "Як довго: лише стільки, скільки потрібно, щоб вам допомогти.",
    valid_until: "Ця згода діє до {date}.",
    valid_open: "Ця згода діє, доки ви її не відкличете.",
    withheld: "Не передається (кому: {whom}): {section}",
    withheld_all: "нікому",
    onward_no: "Вони не можуть передавати вашу інформацію нікому іншому.",
    onward_yes: "Вони можуть передавати її далі лише так, як ви погодили.",
    withdraw_heading: "Як відкликати згоду:",
    withdraw_text: "Ви можете змінити своє рішення будь-коли, не пояснюючи причин. Це не вплине на допомогу, яку ви отримуєте.",
    status_withdrawn: "Стан: цю згоду відкликано {date}. Усіх, хто отримав вашу інформацію, попросили її видалити.",
    status_expired: "Стан: строк дії цієї згоди закінчився {date}. Усіх, хто отримав вашу інформацію, попросили її видалити.",
    status_invalidated: "Стан: цю згоду скасовано {date}. Усіх, хто отримав вашу інформацію, попросили її видалити.",
    status_refused: "Стан: {date} ви відмовилися. Нічого не передається.",
    override_heading: "Інформацію передано без вашої згоди:",
    override_line: "{date} організація {org} отримала: {sections}. Правова підстава: {basis}. Ви маєте право запитати про це.",
    interpreter: "Під час розмови допомагав перекладач (мова: {language}).",
    receipt_no: "Номер запису: {id}",
    minor_by_carer: "Оскільки вам ще немає 18 років, згоду також запитали у ваших батьків, опікуна або особи, яка про вас піклується.",
    minor_assent_given: "Ви самі погодилися на це.",
    minor_assent_refused: "Ви самі відмовилися від цього. Вашу відповідь записано, і на підставі цієї згоди нічого не передається.",
    term_survivor: "Ви вирішуєте, що відбувається з вашою інформацією, — це право кожної людини, яка пережила насильство.",
    term_victim: "Ви вирішуєте, що відбувається з вашою інформацією, — це право кожної постраждалої особи.",
    term_none: "Ви вирішуєте, що відбувається з вашою інформацією.",
};

const FR: Texts = Texts {
    title: "Votre consentement : votre exemplaire",
    greeting: "Bonjour {name}.",
    intro: "Voici votre exemplaire de ce que vous avez accepté le {date}. Ce document est conservé par : {controllers}.",
    shared: "Ce qui sera partagé :",
    with_whom: "Avec qui :",
    for_services: "pour : {services}",
    why: "Pourquoi :",
    how_long: "Combien de temps : ils peuvent garder ces informations {days} au maximum, puis ils doivent les supprimer.",
    how_long_open: "Combien de temps : seulement le temps nécessaire pour vous aider.",
    valid_until: "Ce consentement est valable jusqu'au {date}.",
    valid_open: "Ce consentement est valable jusqu'à ce que vous le retiriez.",
    withheld: "Jamais partagé avec {whom} : {section}",
    withheld_all: "qui que ce soit",
    onward_no: "Ils ne peuvent transmettre vos informations à personne d'autre.",
    onward_yes: "Ils ne peuvent les transmettre à d'autres que de la manière convenue avec vous.",
    withdraw_heading: "Comment retirer votre consentement :",
    withdraw_text: "Vous pouvez changer d'avis à tout moment, sans donner de raison. Cela ne changera rien à l'aide que vous recevez.",
    status_withdrawn: "Statut : ce consentement a été retiré le {date}. Toutes les organisations qui ont reçu vos informations ont été invitées à les supprimer.",
    status_expired: "Statut : ce consentement a pris fin le {date}. Toutes les organisations qui ont reçu vos informations ont été invitées à les supprimer.",
    status_invalidated: "Statut : ce consentement a été annulé le {date}. Toutes les organisations qui ont reçu vos informations ont été invitées à les supprimer.",
    status_refused: "Statut : vous avez refusé le {date}. Rien n'est partagé.",
    override_heading: "Informations partagées sans votre consentement :",
    override_line: "Le {date}, {org} a reçu : {sections}. Base légale : {basis}. Vous avez le droit de poser des questions à ce sujet.",
    interpreter: "Un service d'interprétariat a été utilisé pendant l'entretien (langue : {language}).",
    receipt_no: "Numéro du reçu : {id}",
    minor_by_carer: "Comme vous avez moins de 18 ans, votre parent, tuteur ou la personne qui s'occupe de vous a aussi été consulté.",
    minor_assent_given: "Vous avez vous-même donné votre accord.",
    minor_assent_refused: "Vous avez vous-même refusé. Votre réponse est enregistrée et rien n'est partagé sur la base de ce consentement.",
    term_survivor: "C'est vous qui décidez de ce que deviennent vos informations : c'est le droit de toute personne survivante.",
    term_victim: "C'est vous qui décidez de ce que deviennent vos informations : c'est le droit de toute victime.",
    term_none: "C'est vous qui décidez de ce que deviennent vos informations.",
};

const ES: Texts = Texts {
    title: "Su consentimiento: su copia",
    greeting: "Hola, {name}.",
    intro: "Esta es su copia de lo que usted aceptó el {date}. La conserva: {controllers}.",
    shared: "Qué se compartirá:",
    with_whom: "Con quién:",
    for_services: "para: {services}",
    why: "Para qué:",
    how_long: "Cuánto tiempo: pueden guardar la información {days} como máximo y después deben borrarla.",
    how_long_open: "Cuánto tiempo: solo el tiempo necesario para ayudarle.",
    valid_until: "Este consentimiento es válido hasta el {date}.",
    valid_open: "Este consentimiento es válido hasta que usted lo retire.",
    withheld: "Nunca se comparte con {whom}: {section}",
    withheld_all: "nadie",
    onward_no: "No pueden pasar su información a nadie más.",
    onward_yes: "Solo pueden compartirla con otras personas u organizaciones según lo acordado con usted.",
    withdraw_heading: "Cómo retirar su consentimiento:",
    withdraw_text: "Puede cambiar de opinión en cualquier momento, sin dar explicaciones. Eso no cambiará la ayuda que recibe.",
    status_withdrawn: "Estado: este consentimiento se retiró el {date}. Se pidió a todas las organizaciones que recibieron su información que la borren.",
    status_expired: "Estado: este consentimiento terminó el {date}. Se pidió a todas las organizaciones que recibieron su información que la borren.",
    status_invalidated: "Estado: este consentimiento se anuló el {date}. Se pidió a todas las organizaciones que recibieron su información que la borren.",
    status_refused: "Estado: usted dijo que no el {date}. No se comparte nada.",
    override_heading: "Información compartida sin su consentimiento:",
    override_line: "El {date}, {org} recibió: {sections}. Base legal: {basis}. Tiene derecho a preguntar sobre esto.",
    interpreter: "Se contó con un servicio de interpretación durante la conversación (idioma: {language}).",
    receipt_no: "Número de recibo: {id}",
    minor_by_carer: "Como usted tiene menos de 18 años, también se pidió el consentimiento de su madre, padre, tutor o la persona que le cuida.",
    minor_assent_given: "Usted también dio su acuerdo.",
    minor_assent_refused: "Usted dijo que no. Su respuesta queda registrada y no se comparte nada con base en este consentimiento.",
    term_survivor: "Usted decide qué pasa con su información: es el derecho de toda persona sobreviviente.",
    term_victim: "Usted decide qué pasa con su información: es el derecho de toda víctima.",
    term_none: "Usted decide qué pasa con su información.",
};

fn texts(language: Language) -> &'static Texts {
    match language {
        Language::English => &EN,
        Language::Arabic => &AR,
        Language::Ukrainian => &UK,
        Language::French => &FR,
        Language::Spanish => &ES,
    }
}

/// How a body section is named for the person.
fn section_label(language: Language, section: wire::Section) -> &'static str {
    use Language as L;
    use wire::Section as S;
    match (section, language) {
        (S::Identity, L::English) => "Who you are (your name and other personal details)",
        (S::Identity, L::Arabic) => "هويتك (الاسم وبيانات شخصية أخرى)",
        (S::Identity, L::Ukrainian) => "Хто ви (ім'я та інші особисті дані)",
        (S::Identity, L::French) => "Votre identité (nom et autres données personnelles)",
        (S::Identity, L::Spanish) => "Su identidad (nombre y otros datos personales)",
        (S::SafeContact, L::English) => "How to contact you safely",
        (S::SafeContact, L::Arabic) => "طرق آمنة للتواصل معك",
        (S::SafeContact, L::Ukrainian) => "Як безпечно з вами зв'язатися",
        (S::SafeContact, L::French) => "Comment vous contacter en sécurité",
        (S::SafeContact, L::Spanish) => "Cómo contactarle de forma segura",
        (S::Location, L::English) => "Where you are",
        (S::Location, L::Arabic) => "مكان وجودك",
        (S::Location, L::Ukrainian) => "Де ви перебуваєте",
        (S::Location, L::French) => "Où vous vous trouvez",
        (S::Location, L::Spanish) => "Dónde se encuentra",
        (S::Guardian, L::English) => "Details of your parent, guardian or carer",
        (S::Guardian, L::Arabic) => "بيانات ولي الأمر أو مقدم الرعاية",
        (S::Guardian, L::Ukrainian) => "Дані про батьків, опікуна або особу, яка доглядає",
        (S::Guardian, L::French) => {
            "Coordonnées de votre parent, tuteur ou de la personne qui s'occupe de vous"
        }
        (S::Guardian, L::Spanish) => "Datos de su madre, padre, tutor o cuidador",
        (S::Reason, L::English) => "Why you are being referred",
        (S::Reason, L::Arabic) => "سبب الإحالة",
        (S::Reason, L::Ukrainian) => "Причина направлення",
        (S::Reason, L::French) => "La raison de l'orientation",
        (S::Reason, L::Spanish) => "El motivo de la derivación",
        (S::ServicesProvided, L::English) => "Support you have received so far",
        (S::ServicesProvided, L::Arabic) => "الدعم الذي تلقيته حتى الآن",
        (S::ServicesProvided, L::Ukrainian) => "Допомога, яку ви вже отримали",
        (S::ServicesProvided, L::French) => "L'aide que vous avez déjà reçue",
        (S::ServicesProvided, L::Spanish) => "La ayuda que ya ha recibido",
        (S::Risk, L::English) => "An assessment of risks to your safety",
        (S::Risk, L::Arabic) => "تقييم المخاطر على سلامتك",
        (S::Risk, L::Ukrainian) => "Оцінка ризиків для вашої безпеки",
        (S::Risk, L::French) => "Une évaluation des risques pour votre sécurité",
        (S::Risk, L::Spanish) => "Una valoración de los riesgos para su seguridad",
        (S::DoNotDisclose, L::English) => "What must not be told to whom",
        (S::DoNotDisclose, L::Arabic) => "ما يجب ألا يُكشف ولمن",
        (S::DoNotDisclose, L::Ukrainian) => "Що і кому не можна розголошувати",
        (S::DoNotDisclose, L::French) => "Ce qui ne doit pas être révélé, et à qui",
        (S::DoNotDisclose, L::Spanish) => "Qué no se debe revelar y a quién",
        (S::Appointment, L::English) => "An appointment",
        (S::Appointment, L::Arabic) => "موعد",
        (S::Appointment, L::Ukrainian) => "Домовленість про зустріч",
        (S::Appointment, L::French) => "Un rendez-vous",
        (S::Appointment, L::Spanish) => "Una cita",
        (S::Attachments, L::English) => "Attached documents",
        (S::Attachments, L::Arabic) => "مستندات مرفقة",
        (S::Attachments, L::Ukrainian) => "Додані документи",
        (S::Attachments, L::French) => "Documents joints",
        (S::Attachments, L::Spanish) => "Documentos adjuntos",
        (S::Unspecified, _) => "-",
    }
}

/// How a service is named for the person.
fn service_label(language: Language, service: wire::Service) -> &'static str {
    use Language as L;
    use wire::Service as S;
    let [en, ar, uk, fr, es] = match service {
        S::Shelter => [
            "safe accommodation",
            "مأوى آمن",
            "безпечне житло (притулок)",
            "hébergement sûr",
            "alojamiento seguro",
        ],
        S::Medical => [
            "medical care",
            "رعاية طبية",
            "медична допомога",
            "soins médicaux",
            "atención médica",
        ],
        S::Psychosocial => [
            "emotional and psychosocial support",
            "دعم نفسي واجتماعي",
            "психосоціальна підтримка",
            "soutien psychosocial",
            "apoyo psicosocial",
        ],
        S::Legal => [
            "legal advice",
            "مساعدة قانونية",
            "правова допомога",
            "aide juridique",
            "asesoría legal",
        ],
        S::PoliceLiaison => [
            "contact with the police",
            "التواصل مع الشرطة",
            "зв'язок з поліцією",
            "lien avec la police",
            "enlace con la policía",
        ],
        S::Interpretation => [
            "interpreting",
            "ترجمة شفوية",
            "усний переклад",
            "interprétariat",
            "interpretación",
        ],
        S::Housing => ["housing", "سكن", "житло", "logement", "vivienda"],
        S::Livelihood => [
            "income and livelihood support",
            "دعم سبل العيش",
            "підтримка засобів до існування",
            "soutien aux moyens de subsistance",
            "apoyo a los medios de vida",
        ],
        S::ChildProtection => [
            "child protection",
            "حماية الطفل",
            "захист дітей",
            "protection de l'enfance",
            "protección de la infancia",
        ],
        S::SafetyPlanning => [
            "safety planning",
            "التخطيط للسلامة",
            "планування безпеки",
            "plan de mise en sécurité",
            "plan de seguridad",
        ],
        S::CaseManagement => [
            "case management",
            "إدارة الحالة",
            "ведення випадку",
            "suivi de votre situation",
            "gestión de su caso",
        ],
        S::RestorativeJustice => [
            "restorative justice",
            "العدالة التصالحية",
            "відновне правосуддя",
            "justice restaurative",
            "justicia restaurativa",
        ],
        S::Other | S::Unspecified => [
            "other support",
            "دعم آخر",
            "інша допомога",
            "autre soutien",
            "otro apoyo",
        ],
    };
    match language {
        L::English => en,
        L::Arabic => ar,
        L::Ukrainian => uk,
        L::French => fr,
        L::Spanish => es,
    }
}

fn days_text(language: Language, secs: u64) -> String {
    let days = secs.div_ceil(86_400);
    match language {
        Language::English if days == 1 => "1 day".to_owned(),
        Language::English => format!("{days} days"),
        Language::Arabic => format!("عدد الأيام: {days}"),
        Language::Ukrainian => format!("{days} дн."),
        Language::French if days == 1 => "1 jour".to_owned(),
        Language::French => format!("{days} jours"),
        Language::Spanish if days == 1 => "1 día".to_owned(),
        Language::Spanish => format!("{days} días"),
    }
}

/// `YYYY-MM-DD` (UTC) for Unix seconds; a format every reader of these languages understands.
pub fn utc_date(secs: u64) -> String {
    // Civil-from-days (proleptic Gregorian calendar).
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Replaces `{key}` placeholders in one pass, so values (names, purposes) that happen to
/// contain braces are never themselves substituted.
fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').map(|close| (&after[..close], close)) {
            Some((key, close)) if pairs.iter().any(|(k, _)| *k == key) => {
                if let Some((_, value)) = pairs.iter().find(|(k, _)| *k == key) {
                    out.push_str(value);
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn sections_list(language: Language, sections: &[wire::Section]) -> String {
    let sep = if language == Language::Arabic {
        "، "
    } else {
        ", "
    };
    sections
        .iter()
        .map(|s| section_label(language, *s))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Renders the person's copy of a receipt as plain text.
pub fn render_survivor_copy(copy: &SurvivorCopy<'_>) -> String {
    let language = copy.language;
    let t = texts(language);
    let r = copy.receipt.receipt();
    let sep = if language == Language::Arabic {
        "، "
    } else {
        ", "
    };
    let mut out: Vec<String> = Vec::new();
    out.push(t.title.to_owned());
    out.push(String::new());
    if let Some(name) = copy.preferred_name.filter(|n| !n.trim().is_empty()) {
        out.push(fill(t.greeting, &[("name", name.trim())]));
    }
    let controllers: Vec<&str> = r.controllers.iter().map(|c| c.name.as_str()).collect();
    out.push(fill(
        t.intro,
        &[
            ("date", &utc_date(r.event_time)),
            ("controllers", &controllers.join(sep)),
        ],
    ));
    if r.principal_is_minor {
        if matches!(
            r.expressed_by(),
            wire::ExpressedBy::Caregiver | wire::ExpressedBy::Guardian
        ) {
            out.push(t.minor_by_carer.to_owned());
        }
        match r.child_assent() {
            wire::ChildAssent::Given => out.push(t.minor_assent_given.to_owned()),
            wire::ChildAssent::Refused => out.push(t.minor_assent_refused.to_owned()),
            _ => {}
        }
    }
    let status = match r.state() {
        wire::ConsentState::Withdrawn => Some(t.status_withdrawn),
        wire::ConsentState::Expired => Some(t.status_expired),
        wire::ConsentState::Invalidated => Some(t.status_invalidated),
        wire::ConsentState::Refused => Some(t.status_refused),
        _ => None,
    };
    if let Some(status) = status {
        out.push(String::new());
        out.push(fill(status, &[("date", &utc_date(r.event_time))]));
    }
    out.push(String::new());
    out.push(t.shared.to_owned());
    for s in r
        .data_categories
        .iter()
        .filter_map(|s| wire::Section::try_from(*s).ok())
    {
        out.push(format!("- {}", section_label(language, s)));
    }
    out.push(String::new());
    out.push(t.with_whom.to_owned());
    for recipient in &r.recipients {
        let services: Vec<&str> = recipient
            .services
            .iter()
            .filter_map(|s| wire::Service::try_from(*s).ok())
            .map(|s| service_label(language, s))
            .collect();
        if services.is_empty() {
            out.push(format!("- {}", recipient.org_name));
        } else {
            let services = fill(t.for_services, &[("services", &services.join(sep))]);
            out.push(format!("- {} ({services})", recipient.org_name));
        }
    }
    out.push(String::new());
    out.push(t.why.to_owned());
    for p in &r.purposes {
        out.push(format!("- {}", p.purpose));
    }
    out.push(String::new());
    if r.retention_secs == 0 {
        out.push(t.how_long_open.to_owned());
    } else {
        out.push(fill(
            t.how_long,
            &[("days", &days_text(language, r.retention_secs))],
        ));
    }
    if r.valid_until == 0 {
        out.push(t.valid_open.to_owned());
    } else {
        out.push(fill(t.valid_until, &[("date", &utc_date(r.valid_until))]));
    }
    out.push(
        if r.onward_sharing {
            t.onward_yes
        } else {
            t.onward_no
        }
        .to_owned(),
    );
    for w in &r.withheld {
        let whom = if w.from_whom.trim().eq_ignore_ascii_case("all") {
            t.withheld_all
        } else {
            w.from_whom.trim()
        };
        let section = wire::Section::try_from(w.section).unwrap_or(wire::Section::Unspecified);
        out.push(fill(
            t.withheld,
            &[
                ("whom", whom),
                ("section", section_label(language, section)),
            ],
        ));
    }
    if !copy.overrides.is_empty() {
        out.push(String::new());
        out.push(t.override_heading.to_owned());
        for o in copy.overrides {
            out.push(format!(
                "- {}",
                fill(
                    t.override_line,
                    &[
                        ("date", &utc_date(o.at)),
                        ("org", &o.org_name),
                        ("sections", &sections_list(language, &o.sections)),
                        ("basis", &o.legal_basis),
                    ],
                )
            ));
        }
    }
    out.push(String::new());
    out.push(t.withdraw_heading.to_owned());
    out.push(t.withdraw_text.to_owned());
    out.push(r.withdrawal_method.trim().to_owned());
    out.push(String::new());
    if r.collection_method() == wire::CollectionMethod::ViaInterpreter {
        out.push(fill(
            t.interpreter,
            &[("language", &r.interpreter_language)],
        ));
    }
    out.push(
        match copy.preferred_term {
            PreferredTerm::Survivor => t.term_survivor,
            PreferredTerm::Victim => t.term_victim,
            PreferredTerm::None => t.term_none,
        }
        .to_owned(),
    );
    out.push(fill(
        t.receipt_no,
        &[("id", &copy.receipt.id().short().to_string())],
    ));
    let mut text = out.join("\n");
    text.push('\n');
    text
}
