//! Property tests of the lifecycle: any sequence of attempted transitions, by any side and
//! role, keeps the guards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::identity::Role;
use handover_core::referral::{ActorInfo, Lifecycle, Outcome, ReferralState, Side, Transition};
use handover_proto::e2e::v1 as wire;
use proptest::prelude::*;

fn transition() -> impl Strategy<Value = Transition> {
    prop_oneof![
        Just(Transition::Delivered),
        Just(Transition::Acknowledge),
        Just(Transition::Accept),
        prop_oneof![
            Just(wire::DeclineReason::Unspecified),
            Just(wire::DeclineReason::NoCapacity),
            Just(wire::DeclineReason::Other),
        ]
        .prop_map(Transition::Decline),
        Just(Transition::RequestInfo),
        Just(Transition::ProvideInfo),
        Just(Transition::StartService),
        Just(Transition::Update),
        prop_oneof![
            Just(Outcome::Successful),
            Just(Outcome::NotSuccessful(
                wire::NotSuccessfulReason::Unspecified
            )),
            Just(Outcome::NotSuccessful(
                wire::NotSuccessfulReason::ClientRefused
            )),
        ]
        .prop_map(Transition::Complete),
        Just(Transition::Withdraw),
        Just(Transition::ConsentRevoked),
        Just(Transition::ConsentRenewed),
        Just(Transition::Expire),
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            Just(Some("Court order".to_owned()))
        ]
        .prop_map(|retained_under| Transition::PurgeConfirmed { retained_under }),
    ]
}

fn actor() -> impl Strategy<Value = ActorInfo> {
    (
        prop_oneof![Just(Side::Sender), Just(Side::Receiver)],
        prop_oneof![
            Just(Role::Admin),
            Just(Role::Caseworker),
            Just(Role::Ambassador)
        ],
    )
        .prop_map(|(side, role)| ActorInfo { side, role })
}

fn kind() -> impl Strategy<Value = wire::ReferralKind> {
    prop_oneof![
        Just(wire::ReferralKind::Referral),
        Just(wire::ReferralKind::Transfer),
        Just(wire::ReferralKind::InfoRequest),
    ]
}

proptest! {
    #[test]
    fn guards_hold_for_any_sequence(
        kind in kind(),
        steps in proptest::collection::vec((transition(), actor()), 0..40),
    ) {
        let mut lc = Lifecycle::received(kind);
        let mut accepted = false;
        let mut closed = false;
        for (t, who) in steps {
            let before = lc.clone();
            match lc.apply(t.clone(), who) {
                Err((back, _)) => {
                    prop_assert_eq!(&back, &before, "a refusal changed the state");
                    lc = back;
                }
                Ok(next) => {
                    // Who may do what.
                    if matches!(t, Transition::Accept | Transition::Decline(_)
                        | Transition::Complete(_) | Transition::StartService
                        | Transition::RequestInfo | Transition::Update)
                    {
                        prop_assert_eq!(who.side, Side::Receiver);
                        prop_assert_ne!(who.role, Role::Ambassador);
                    }
                    if matches!(t, Transition::Withdraw | Transition::ProvideInfo
                        | Transition::ConsentRevoked | Transition::ConsentRenewed)
                    {
                        prop_assert_eq!(who.side, Side::Sender);
                    }
                    // Accept and decline only from ACKNOWLEDGED or INFO_REQUESTED.
                    if matches!(t, Transition::Accept | Transition::Decline(_)) {
                        prop_assert!(matches!(
                            before.state(),
                            ReferralState::Acknowledged | ReferralState::InfoRequested
                        ));
                    }
                    match next.state() {
                        ReferralState::Accepted => accepted = true,
                        ReferralState::Completed(outcome) => {
                            prop_assert!(accepted, "completed without acceptance");
                            prop_assert_ne!(
                                *outcome,
                                Outcome::NotSuccessful(wire::NotSuccessfulReason::Unspecified)
                            );
                        }
                        ReferralState::InService => prop_assert!(accepted),
                        ReferralState::Declined(reason) => {
                            prop_assert_ne!(*reason, wire::DeclineReason::Unspecified);
                        }
                        ReferralState::RetainedUnderException { legal_basis, .. } => {
                            prop_assert!(!legal_basis.trim().is_empty());
                        }
                        _ => {}
                    }
                    if matches!(t, Transition::Withdraw) {
                        prop_assert!(
                            !(kind == wire::ReferralKind::Transfer && accepted),
                            "withdrew an accepted transfer"
                        );
                    }
                    if matches!(
                        next.state(),
                        ReferralState::Withdrawn | ReferralState::Expired
                            | ReferralState::ConsentRevoked | ReferralState::Declined(_)
                            | ReferralState::PurgeConfirmed(_)
                            | ReferralState::RetainedUnderException { .. }
                    ) {
                        closed = true;
                    }
                    if closed {
                        // Nothing reopens a closed referral.
                        prop_assert!(!next.state().is_open());
                    }
                    lc = next;
                }
            }
        }
    }
}
