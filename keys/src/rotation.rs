//! The operations behind `aws2azure keys` and the scheduled rotation: each
//! reads the ring, asks [`crate::plan`] what is allowed, and does it in the
//! one order that keeps K1 and K2 whatever happens in between: publication
//! before any alias moves, the retired stamp before the alias goes, stamps
//! after the step they record.

use std::sync::Arc;

use aws2azure_shared::clock::Clock;
use aws2azure_shared::jwk::KeyId;
use serde::Serialize;

use crate::document::KeyDocument;
use crate::plan::{self, KeyStatus, Observation, Repair};
use crate::public::PublicKeySet;
use crate::publish::Publisher;
use crate::ring::{KeyRing, Slot, Stamp, Usability};
use crate::store::{KeyStore, StoreError};
use crate::{Error, Timings};

/// One thing an operation did, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Repaired {
        repair: Repair,
    },
    Staged {
        key_id: String,
        kid: String,
        adopted: bool,
    },
    Published {
        version: String,
        kids: Vec<String>,
        to: String,
    },
    SeenPublic {
        kid: String,
    },
    LostPublic {
        kid: String,
    },
    Promoted {
        kid: String,
        demoted: Option<String>,
    },
    Retired {
        kid: String,
    },
    Unlisted {
        kid: String,
    },
    Disabled {
        kid: String,
    },
    DeletionScheduled {
        kid: String,
        days: u32,
    },
}

/// What an operation did and what it risked; filled in as it goes, so that a
/// failed operation still reports the steps it completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub actions: Vec<Action>,
    /// What a `--force` skipped, in words.
    pub risks: Vec<String>,
    /// Why `rotate` did not promote or retire although it was due (a guard),
    /// or could not read the public key set.
    pub waiting: Vec<String>,
}

impl Report {
    fn did(&mut self, action: Action) {
        tracing::info!(action = ?action, "key lifecycle step");
        self.actions.push(action);
    }

    /// Notes a reason once, however many steps ran into it.
    fn wait(&mut self, reason: String) {
        if !self.waiting.contains(&reason) {
            self.waiting.push(reason);
        }
    }
}

/// The ring's status: every key and the document it should publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub now: u64,
    pub keys: Vec<KeyStatus>,
    pub timings: Timings,
    /// The public key set's kids, or why it could not be read.
    pub public_kids: Result<Vec<String>, String>,
    /// Every key the ring should publish is listed publicly, in order.
    pub public_matches: bool,
    /// The current key's period plus the warm-up is over and no promotion
    /// happened: the schedule is not running or keeps failing.
    pub overdue: bool,
    /// A next key whose promotion is due is not yet served publicly.
    pub next_not_public_when_due: bool,
}

pub struct Rotator {
    store: Arc<dyn KeyStore>,
    publisher: Arc<dyn Publisher>,
    public: Arc<dyn PublicKeySet>,
    clock: Arc<dyn Clock>,
    timings: Timings,
}

impl Rotator {
    /// Refuses timings that break K2 (see [`Timings::validate`]).
    pub fn new(
        store: Arc<dyn KeyStore>,
        publisher: Arc<dyn Publisher>,
        public: Arc<dyn PublicKeySet>,
        clock: Arc<dyn Clock>,
        timings: Timings,
    ) -> Result<Self, Error> {
        timings.validate()?;
        Ok(Self {
            store,
            publisher,
            public,
            clock,
            timings,
        })
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    async fn ring(&self) -> Result<KeyRing, Error> {
        Ok(KeyRing::new(self.store.keys().await?))
    }

    async fn public_kids(&self) -> Result<Vec<KeyId>, Error> {
        let set = self.public.fetch().await?;
        Ok(set.keys().iter().map(|k| k.kid().clone()).collect())
    }

    /// The key document the ring should have published (`keys export`).
    pub async fn document(&self) -> Result<KeyDocument, Error> {
        KeyDocument::for_ring(&self.ring().await?)
    }

    pub async fn status(&self) -> Result<Status, Error> {
        let now = self.clock.now_unix();
        let ring = self.ring().await?;
        let public = self.public_kids().await;
        let expected = KeyDocument::for_ring(&ring).ok();
        let public_matches = match (&public, &expected) {
            (Ok(kids), Some(doc)) => kids.as_slice() == doc.kids(),
            _ => false,
        };
        let overdue = ring
            .current()
            .and_then(|c| c.stamp(Stamp::Promoted))
            .is_some_and(|p| {
                now > p
                    .saturating_add(self.timings.period)
                    .saturating_add(self.timings.warm_up)
            });
        let next_not_public_when_due = ring.next().is_some_and(|n| {
            let listed = public
                .as_ref()
                .is_ok_and(|kids| kids.iter().any(|k| k == n.jwk.kid()));
            let due = plan::promotion_due_at(&ring, &self.timings).is_some_and(|d| now >= d);
            due && !listed
        });
        Ok(Status {
            now,
            keys: plan::status(&ring, now, &self.timings),
            timings: self.timings,
            public_kids: public
                .map(|kids| kids.iter().map(ToString::to_string).collect())
                .map_err(|e| e.to_string()),
            public_matches,
            overdue,
            next_not_public_when_due,
        })
    }

    /// Puts a ring left half-way by a crash back in order.
    async fn repair(&self, report: &mut Report) -> Result<KeyRing, Error> {
        let now = self.clock.now_unix();
        let ring = self.ring().await?;
        let repairs = plan::repairs(&ring);
        if repairs.is_empty() {
            return Ok(ring);
        }
        for repair in repairs {
            match &repair {
                Repair::Unpoint { slot, .. } => self.store.unpoint(*slot).await?,
                Repair::Stamp { key_id, stamp } => self.store.stamp(key_id, *stamp, now).await?,
            }
            report.did(Action::Repaired { repair });
        }
        self.ring().await
    }

    /// Writes the document for the ring and stamps the keys published for
    /// the first time.
    ///
    /// What the edge serves is read and recorded first: if someone
    /// overwrote the document and dropped the next key, this write puts it
    /// back, and no later read could tell that relying parties may have
    /// cached a key set without it; its warm-up must start again (K1).
    async fn publish_ring(&self, ring: &KeyRing, report: &mut Report) -> Result<(), Error> {
        let document = KeyDocument::for_ring(ring)?;
        match self.public_kids().await {
            Ok(kids) => self.observe(ring, &kids, report).await?,
            Err(e) => report.wait(e.to_string()),
        }
        self.publisher.publish(&document).await?;
        report.did(Action::Published {
            version: document.version(),
            kids: document.kids().iter().map(ToString::to_string).collect(),
            to: self.publisher.describe(),
        });
        let now = self.clock.now_unix();
        for key in ring.published() {
            if key.stamp(Stamp::Published).is_none() {
                self.store.stamp(&key.key_id, Stamp::Published, now).await?;
            }
        }
        Ok(())
    }

    /// `keys publish`: writes the document the ring should have.
    pub async fn publish(&self, report: &mut Report) -> Result<(), Error> {
        let ring = self.repair(report).await?;
        self.publish_ring(&ring, report).await
    }

    /// `keys stage`: a new next key (or the one a crash left unstaged),
    /// published at once so that its warm-up starts.
    pub async fn stage(&self, report: &mut Report) -> Result<(), Error> {
        let ring = self.repair(report).await?;
        if let Some(next) = ring.next() {
            return Err(Error::Refused(format!(
                "kid {} is already staged as next; promote it or wait for `rotate`",
                next.kid()
            )));
        }
        self.stage_unchecked(&ring, report).await
    }

    async fn stage_unchecked(&self, ring: &KeyRing, report: &mut Report) -> Result<(), Error> {
        let unstaged = ring
            .in_state(crate::KeyState::Unstaged)
            .map(|k| k.key_id.clone());
        let adopted = unstaged.is_some();
        let key_id = match unstaged {
            Some(id) => {
                // An unstaged key may carry a sighting from before it lost
                // its place: its warm-up starts again from this staging.
                self.store.unstamp(&id, Stamp::SeenPublic).await?;
                id
            }
            None => self.store.create_key(self.clock.now_unix()).await?,
        };
        // Publication before the alias moves, here too: the document lists
        // the key before `next` points at it, so a failed publication
        // leaves it unstaged (the rerun adopts it) and no alias moved.
        let mut keys = self.ring().await?.keys().to_vec();
        let Some(key) = keys.iter_mut().find(|k| k.key_id == key_id) else {
            return Err(StoreError::UnknownKey {
                key_id,
                reason: "created, but the store does not list it".into(),
            }
            .into());
        };
        key.slots.insert(Slot::Next);
        let kid = key.kid().to_string();
        self.publish_ring(&KeyRing::new(keys), report).await?;
        self.store.point(Slot::Next, &key_id).await?;
        report.did(Action::Staged {
            key_id,
            kid,
            adopted,
        });
        Ok(())
    }

    /// `keys promote`: next becomes current, current becomes previous. K1
    /// is checked against the public key set read now.
    pub async fn promote(&self, force: bool, report: &mut Report) -> Result<(), Error> {
        let ring = self.repair(report).await?;
        let public = self.public_kids().await;
        if let Err(e) = &public {
            report.waiting.push(e.to_string());
        }
        let now = self.clock.now_unix();
        let promotion = plan::check_promote(
            &ring,
            now,
            &self.timings,
            public.as_ref().ok().map(Vec::as_slice),
            force,
        )
        .map_err(|r| Error::Refused(r.reason))?;
        report.risks.extend(promotion.risks.iter().cloned());
        let next = promotion.next.clone();
        let current = promotion.current.cloned();
        // The document lists both keys before and after; only the order
        // changes. Make sure it is out before any alias moves.
        if next.stamp(Stamp::Published).is_none() {
            self.publish_ring(&ring, report).await?;
        }
        if let Some(current) = &current {
            self.store.point(Slot::Previous, &current.key_id).await?;
        }
        self.store.point(Slot::Current, &next.key_id).await?;
        self.store.unpoint(Slot::Next).await?;
        let now = self.clock.now_unix();
        self.store.stamp(&next.key_id, Stamp::Promoted, now).await?;
        if let Some(current) = &current {
            self.store
                .stamp(&current.key_id, Stamp::Demoted, now)
                .await?;
        }
        report.did(Action::Promoted {
            kid: next.kid().to_string(),
            demoted: current.map(|c| c.kid().to_string()),
        });
        // Current first in the document.
        let ring = self.ring().await?;
        self.publish_ring(&ring, report).await
    }

    /// `keys retire`: previous leaves the document. K2 is checked.
    pub async fn retire(&self, force: bool, report: &mut Report) -> Result<(), Error> {
        let ring = self.repair(report).await?;
        let now = self.clock.now_unix();
        let (previous, risks) = plan::check_retire(&ring, now, &self.timings, force)
            .map_err(|r| Error::Refused(r.reason))?;
        report.risks.extend(risks);
        // The stamp first: it is what lets the rotation role delete the key
        // later, and a crash before the alias goes leaves it retired anyway.
        self.store
            .stamp(&previous.key_id, Stamp::Retired, now)
            .await?;
        // A previous key that lost its alias has none to remove; never take
        // the alias from another key.
        if previous.slots.contains(&Slot::Previous) {
            self.store.unpoint(Slot::Previous).await?;
        }
        report.did(Action::Retired {
            kid: previous.kid().to_string(),
        });
        let ring = self.ring().await?;
        self.publish_ring(&ring, report).await
    }

    /// `keys rotate`: every step that is due, in order; idempotent. Safe to
    /// run on a schedule and to rerun after a crash at any point.
    pub async fn rotate(&self, report: &mut Report) -> Result<(), Error> {
        let mut ring = self.repair(report).await?;
        let now = self.clock.now_unix();

        if plan::retirement_due_at(&ring, &self.timings).is_some_and(|d| now >= d) {
            self.retire(false, report).await?;
            ring = self.ring().await?;
        }
        if plan::stage_due(&ring, now, &self.timings) {
            self.stage_unchecked(&ring, report).await?;
            ring = self.ring().await?;
        }

        // Publish whenever the public key set is not what the ring should
        // publish (a key new to it, a retired key still in it, another
        // order, or a document overwritten by hand), or cannot be read.
        let mut public = self.public_kids().await;
        let expected = KeyDocument::for_ring(&ring)?;
        let unpublished = ring
            .published()
            .iter()
            .any(|k| k.stamp(Stamp::Published).is_none());
        let differs = public
            .as_ref()
            .map_or(true, |kids| kids.as_slice() != expected.kids());
        if unpublished || differs {
            self.publish_ring(&ring, report).await?;
            ring = self.ring().await?;
            // What the edge serves now: a write it already serves is seen
            // by this run, not left for the next one (which would then
            // have something to do although no time passed).
            public = self.public_kids().await;
        }

        match &public {
            Ok(kids) => self.observe(&ring, kids, report).await?,
            Err(e) => report.wait(e.to_string()),
        }
        ring = self.ring().await?;

        let now = self.clock.now_unix();
        if ring.next().is_some()
            && plan::promotion_due_at(&ring, &self.timings).is_some_and(|d| now >= d)
        {
            let public = public.as_ref().ok().map(Vec::as_slice);
            match plan::check_promote(&ring, now, &self.timings, public, false) {
                Ok(_) => self.promote(false, report).await?,
                Err(refusal) => report.waiting.push(refusal.reason),
            }
        }

        // Last: a key KMS refuses to disable or delete must not hold up
        // the promotion above.
        let ring = self.ring().await?;
        for (key, usability) in plan::deletions(&ring) {
            if usability == Usability::Enabled {
                self.store.disable(&key.key_id).await?;
                report.did(Action::Disabled {
                    kid: key.kid().to_string(),
                });
            }
            let days = self.timings.deletion_window_days;
            self.store.schedule_deletion(&key.key_id, days).await?;
            report.did(Action::DeletionScheduled {
                kid: key.kid().to_string(),
                days,
            });
        }
        Ok(())
    }

    async fn observe(
        &self,
        ring: &KeyRing,
        public: &[KeyId],
        report: &mut Report,
    ) -> Result<(), Error> {
        let now = self.clock.now_unix();
        let kid_of = |id: &str| {
            ring.get(id)
                .map(|k| k.kid().to_string())
                .unwrap_or_default()
        };
        for observation in plan::observations(ring, public) {
            let action = match observation {
                Observation::Seen(id) => {
                    self.store.stamp(&id, Stamp::SeenPublic, now).await?;
                    Action::SeenPublic { kid: kid_of(&id) }
                }
                Observation::Lost(id) => {
                    self.store.unstamp(&id, Stamp::SeenPublic).await?;
                    Action::LostPublic { kid: kid_of(&id) }
                }
                Observation::Unlisted(id) => {
                    self.store.stamp(&id, Stamp::Unlisted, now).await?;
                    Action::Unlisted { kid: kid_of(&id) }
                }
            };
            report.did(action);
        }
        Ok(())
    }
}

#[cfg(test)]
mod staging_tests;
#[cfg(test)]
mod tests;
