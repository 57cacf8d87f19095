//! The fetch: a fresh assertion signed and exchanged at Entra, retried with
//! backoff while it can succeed, within the time left.

use std::time::{Duration, Instant};

use aws2azure_shared::assertion::{AssertionBuilder, ClientAssertion};
use aws2azure_shared::profile::{AssertionSource, Profile};

use super::{Effort, Inner, Loading};
use crate::Error;
use crate::entra::{ExchangeRequest, IssuedToken};
use crate::sts::check_subject;
use crate::token::CachedToken;

impl Loading<'_> {
    /// Signs a fresh assertion and exchanges it, retrying what can succeed,
    /// each step within the time left.
    pub(super) async fn fetch(&mut self, effort: Effort) -> Result<CachedToken, Error> {
        let (inner, profile) = (self.inner, &self.load.profile);
        let settings = &inner.settings;
        let (max_attempts, budget) = match effort {
            Effort::Full => (settings.max_attempts, settings.exchange_deadline),
            Effort::Refresh => (1, settings.refresh_budget.min(settings.exchange_deadline)),
        };
        let deadline = self.load.deadline.within(budget);
        let budget = deadline.left();
        let token_endpoint = profile.token_endpoint();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = inner.clock.now_unix();
            let signing = Instant::now();
            // KMS and STS throttling is retried by the SDK clients
            // themselves (bounded); a second retry loop here would multiply
            // the attempts.
            let assertion =
                match tokio::time::timeout(deadline.left(), inner.assertion(profile, now)).await {
                    Ok(result) => result,
                    Err(_) => Err(unfinished(profile.assertion, budget)),
                };
            self.upstream.sign_calls += 1;
            self.upstream.sign_ms += signing.elapsed().as_millis() as u64;
            let assertion = assertion?;

            let request = ExchangeRequest {
                token_endpoint: &token_endpoint,
                client_id: profile.client_id.as_str(),
                scope: profile.scope.as_str(),
                assertion: &assertion,
            };
            let calling = Instant::now();
            let result = match tokio::time::timeout(
                deadline.left(),
                inner.exchange.exchange(&request),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Error::EntraTimeout(budget)),
            };
            self.upstream.entra_calls += 1;
            self.upstream.entra_ms += calling.elapsed().as_millis() as u64;
            let err = match result {
                Ok(issued) => return Ok(inner.to_cached(issued, now)),
                Err(err) => err,
            };
            if !err.is_retryable() || attempt >= max_attempts {
                return Err(err);
            }
            let wait = err.retry_after().unwrap_or_else(|| inner.backoff(attempt));
            if wait >= deadline.left() {
                tracing::warn!(profile = %profile.name, attempt, wait_ms = wait.as_millis() as u64, "no time left to retry Entra");
                return Err(err);
            }
            tracing::warn!(
                profile = %profile.name,
                attempt,
                aadsts = err.aadsts(),
                error = %err,
                wait_ms = wait.as_millis() as u64,
                "retrying the token exchange"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error of a signing step that ran out of time, by who was signing.
fn unfinished(source: AssertionSource, budget: Duration) -> Error {
    let why = format!(
        "signing did not finish within the {} ms left",
        budget.as_millis()
    );
    match source {
        AssertionSource::Kms => Error::KmsUnreachable(why),
        AssertionSource::Sts => Error::StsUnreachable(why),
    }
}

impl Inner {
    /// A fresh assertion for `profile` from the source it names.
    async fn assertion(&self, profile: &Profile, now: u64) -> Result<ClientAssertion, Error> {
        let missing = || Error::NoAssertionSource {
            profile: profile.name.to_string(),
            source_name: profile.assertion.as_str(),
        };
        match profile.assertion {
            AssertionSource::Kms => {
                let key = self.assertions.key.as_ref().ok_or_else(missing)?;
                let claims = AssertionBuilder::new(&self.settings.issuer, &profile.subject)
                    .lifetime_secs(self.settings.assertion_lifetime_secs)?
                    .build(now, &uuid::Uuid::new_v4().to_string())?;
                key.sign_assertion(&claims).await
            }
            AssertionSource::Sts => {
                let sts = self.assertions.sts.as_ref().ok_or_else(missing)?;
                let assertion = sts.web_identity_token(profile.role_arn.as_ref()).await?;
                check_subject(&assertion, profile)?;
                Ok(assertion)
            }
        }
    }

    /// Exponential backoff, capped, with "equal jitter": half fixed, half
    /// random, so retries of many callers spread out yet never come at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.backoff_base.as_millis() as u64;
        let cap = self.settings.backoff_max.as_millis() as u64;
        let ceiling = base.saturating_mul(1 << attempt.min(16)).min(cap);
        Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling.max(1)))
    }

    fn to_cached(&self, issued: IssuedToken, now: u64) -> CachedToken {
        let expires_on = now + issued.expires_in;
        let margin = self.settings.refresh_margin_secs;
        let planned = match issued.refresh_in {
            Some(refresh_in) if refresh_in > 0 && refresh_in < issued.expires_in => {
                now + refresh_in
            }
            // Short-lived tokens refresh at half-life, not immediately.
            _ if issued.expires_in <= 2 * margin => now + issued.expires_in / 2,
            _ => expires_on - margin,
        };
        // Jitter spreads the refreshes of many instances over a minute or so.
        let jitter = fastrand::u64(0..=(margin / 5).min(planned.saturating_sub(now) / 5));
        CachedToken {
            access_token: issued.access_token,
            token_type: issued.token_type,
            expires_on,
            refresh_on: planned - jitter,
        }
    }
}
