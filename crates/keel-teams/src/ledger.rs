//! Rate limits and budgets, embedded: every check-and-reserve of a request runs under one
//! lock, so concurrent requests can never all pass a check that only one of them fits.
//!
//! - Rates (RPM and TPM per key and per team up the chain) are sliding 60-second logs: a
//!   request is admitted only when what was admitted in the last 60 s plus this request stays
//!   within the limit, so no 60-second window ever holds more than the limit. A token entry
//!   holds the request's estimate until the call ends, then its real usage.
//! - Budgets (per key, per team up the chain, per end user of a key) hold what was spent in
//!   the current period and what is reserved by calls in flight. A call reserves its
//!   worst-case cost before it starts and is admitted only if that fits every budget; when it
//!   ends the reservation becomes its real cost, or is released when it failed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use keel_store::{BudgetRecord, KeyRecord, TeamRecord};

use crate::directory::Caller;
use crate::period::{Period, period_start_ms};

const WINDOW_MS: i64 = 60_000;

/// What a request asks of its limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// Input tokens (an upper bound) plus the output tokens it may produce.
    pub tokens: u64,
    /// Its worst-case cost in USD.
    pub usd: f64,
}

/// Why a request was refused; the text names the limit.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Rate { scope: String, what: &'static str, limit: u64, retry_after_ms: i64 },
    Budget { scope: String, limit_usd: f64, spent_usd: f64, reserved_usd: f64, ask_usd: f64, period: &'static str },
    /// What was spent could not be read, so nothing is admitted on a guess.
    Unavailable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rate { scope, what, limit, retry_after_ms } => write!(
                f,
                "rate limit reached for {scope}: {limit} {what} per minute; try again in {:.1} s",
                *retry_after_ms as f64 / 1000.0
            ),
            Refusal::Budget { scope, limit_usd, spent_usd, reserved_usd, ask_usd, period } => write!(
                f,
                "budget exceeded for {scope}: ${limit_usd} per {period}, ${spent_usd:.6} spent and ${reserved_usd:.6} held by calls in flight; this call may cost up to ${ask_usd:.6}"
            ),
            Refusal::Unavailable(why) => write!(f, "budgets cannot be checked, so keel refuses the call: {why}"),
        }
    }
}

impl Refusal {
    /// A rate limit's headers for the refused request: nothing remains until the reset.
    pub fn view(&self) -> Option<RateView> {
        let Refusal::Rate { what, limit, retry_after_ms, .. } = self else { return None };
        let window = Some(Window { limit: *limit, remaining: 0, reset_ms: *retry_after_ms });
        Some(if *what == "requests" { RateView { requests: window, tokens: None } } else { RateView { requests: None, tokens: window } })
    }
}

/// The tightest rate limits that applied, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateView {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window has room for one more (requests) or is empty again (tokens).
    pub reset_ms: i64,
}

/// A request's hold on its limits, to settle when its call ends.
#[derive(Debug)]
pub struct Reservation {
    /// Each token log held, and the millisecond its entry sits at.
    tokens: Vec<(Arc<str>, i64)>,
    budgets: Vec<Arc<str>>,
    ask: Ask,
    pub view: RateView,
}

/// One rate limit of a caller, named once when the directory loads.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    /// The log's name (`key key_1 tokens`), and the scope it is reported as (`key key_1`).
    log: Arc<str>,
    scope: Arc<str>,
    tokens: bool,
    limit: u64,
}

/// One budget of a caller, named once when the directory loads.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    scope: BudgetScope,
    name: Arc<str>,
    usd: f64,
    period: Period,
}

/// What a caller is checked against, worked out when its key is loaded, not per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    rates: Vec<Rate>,
    budgets: Vec<Limit>,
}

fn period(text: &str) -> Period {
    Period::parse(text).unwrap_or(Period::Total)
}

impl Plan {
    pub(crate) fn new(key: &KeyRecord, teams: &[Arc<TeamRecord>]) -> Plan {
        let mut plan = Plan::default();
        let mut rates = |scope: String, rpm: Option<u64>, tpm: Option<u64>| {
            let scope: Arc<str> = scope.into();
            for (limit, tokens, what) in [(rpm, false, "requests"), (tpm, true, "tokens")] {
                if let Some(limit) = limit {
                    plan.rates.push(Rate { log: format!("{scope} {what}").into(), scope: scope.clone(), tokens, limit });
                }
            }
        };
        rates(format!("key {}", key.id), key.rpm, key.tpm);
        for team in teams {
            rates(format!("team {}", team.id), team.rpm, team.tpm);
        }
        let mut budget = |scope: BudgetScope, b: &BudgetRecord| {
            plan.budgets.push(Limit { name: scope.name().into(), scope, usd: b.usd, period: period(&b.period) });
        };
        if let Some(b) = &key.budget {
            budget(BudgetScope::Key(key.id.clone()), b);
        }
        for team in teams {
            if let Some(b) = &team.budget {
                budget(BudgetScope::Team(team.id.clone()), b);
            }
        }
        plan
    }
}

/// Admitted amounts per millisecond, oldest first: requests in the same millisecond share
/// an entry, so a log holds at most one entry per millisecond of the window, whatever the
/// rate.
#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<(i64, u64)>,
    total: u64,
}

impl Log {
    fn expire(&mut self, now: i64) {
        while let Some(&(at, amount)) = self.entries.front() {
            if at > now - WINDOW_MS {
                break;
            }
            self.total -= amount;
            self.entries.pop_front();
        }
    }

    /// Adds `amount` at `now` (or at the newest entry's millisecond, should the clock have
    /// stepped back); the millisecond it sits at.
    fn push(&mut self, now: i64, amount: u64) -> i64 {
        self.total += amount;
        match self.entries.back_mut() {
            Some((at, held)) if *at >= now => {
                *held += amount;
                *at
            }
            _ => {
                self.entries.push_back((now, amount));
                now
            }
        }
    }

    /// Moves what the entry at `at` holds from `from` to `to` (a settled estimate).
    fn replace(&mut self, at: i64, from: u64, to: u64) {
        if let Ok(idx) = self.entries.binary_search_by_key(&at, |&(t, _)| t) {
            let held = &mut self.entries[idx].1;
            let from = from.min(*held);
            *held = *held - from + to;
            self.total = self.total - from + to;
        }
    }

    /// How long until `need` more fits under `limit`.
    fn wait_ms(&self, need: u64, limit: u64, now: i64) -> i64 {
        let mut total = self.total;
        for &(at, amount) in &self.entries {
            total -= amount;
            if total + need <= limit {
                return (at + WINDOW_MS - now).max(1);
            }
        }
        WINDOW_MS
    }
}

#[derive(Debug)]
struct Budget {
    period: Period,
    start_ms: i64,
    spent: f64,
    reserved: f64,
}

#[derive(Debug, Default)]
struct State {
    logs: HashMap<Arc<str>, Log>,
    budgets: HashMap<Arc<str>, Budget>,
}

/// Loads what a budget's scope already spent in its period (from the traces); `Err` says
/// why it could not.
pub type SpentSince<'a> = &'a dyn Fn(&BudgetScope, i64) -> Result<f64, String>;

/// Whose spending a budget counts.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetScope {
    Key(String),
    /// A team and every team under it.
    Team(String),
    User { key: String, user: String },
}

impl BudgetScope {
    fn name(&self) -> String {
        match self {
            BudgetScope::Key(id) => format!("key {id}"),
            BudgetScope::Team(id) => format!("team {id}"),
            BudgetScope::User { key, user } => format!("user {user} of key {key}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    /// Checks every limit and budget that applies to `caller` (and its end `user`) and, when
    /// all fit, holds `ask` against each; else the first limit that does not fit.
    pub fn reserve(&self, caller: &Caller, user: Option<&str>, ask: Ask, now: i64, spent: SpentSince) -> Result<Reservation, Refusal> {
        let plan = &caller.plan;
        // An end user's budget is the one named per request.
        let user_budget = match (&caller.key.user_budget, user) {
            (Some(b), Some(user)) => {
                let scope = BudgetScope::User { key: caller.key.id.clone(), user: user.to_string() };
                Some(Limit { name: scope.name().into(), scope, usd: b.usd, period: period(&b.period) })
            }
            _ => None,
        };
        let budgets = || plan.budgets.iter().chain(user_budget.as_ref());

        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut *state;
        let mut view = RateView::default();
        for rate in &plan.rates {
            let need = if rate.tokens { ask.tokens } else { 1 };
            if !state.logs.contains_key(&rate.log) {
                state.logs.insert(rate.log.clone(), Log::default());
            }
            let log = state.logs.get_mut(&rate.log).expect("inserted above");
            log.expire(now);
            if log.total + need > rate.limit {
                let what = if rate.tokens { "tokens" } else { "requests" };
                return Err(Refusal::Rate { scope: rate.scope.to_string(), what, limit: rate.limit, retry_after_ms: log.wait_ms(need, rate.limit, now) });
            }
            let window = Window {
                limit: rate.limit,
                remaining: rate.limit - log.total - need,
                reset_ms: log.entries.front().map_or(WINDOW_MS, |&(at, _)| at + WINDOW_MS - now),
            };
            let slot = if rate.tokens { &mut view.tokens } else { &mut view.requests };
            if slot.is_none_or(|w| window.remaining < w.remaining) {
                *slot = Some(window);
            }
        }
        for limit in budgets() {
            let start = period_start_ms(limit.period, now);
            if !state.budgets.contains_key(&limit.name) {
                state.budgets.insert(limit.name.clone(), Budget { period: limit.period, start_ms: -1, spent: 0.0, reserved: 0.0 });
            }
            let budget = state.budgets.get_mut(&limit.name).expect("inserted above");
            if budget.start_ms != start || budget.period != limit.period {
                // A new period (or the first look since start): what the traces say was spent.
                budget.spent = spent(&limit.scope, start).map_err(Refusal::Unavailable)?;
                budget.period = limit.period;
                budget.start_ms = start;
            }
            if budget.spent + budget.reserved + ask.usd > limit.usd {
                return Err(Refusal::Budget {
                    scope: limit.name.to_string(),
                    limit_usd: limit.usd,
                    spent_usd: budget.spent,
                    reserved_usd: budget.reserved,
                    ask_usd: ask.usd,
                    period: limit.period.as_str(),
                });
            }
        }
        // Everything fits: hold it all.
        let mut tokens = Vec::new();
        for rate in &plan.rates {
            let log = state.logs.get_mut(&rate.log).expect("checked above");
            let at = log.push(now, if rate.tokens { ask.tokens } else { 1 });
            if rate.tokens {
                tokens.push((rate.log.clone(), at));
            }
        }
        let mut held = Vec::new();
        for limit in budgets() {
            state.budgets.get_mut(&limit.name).expect("checked above").reserved += ask.usd;
            held.push(limit.name.clone());
        }
        Ok(Reservation { tokens, budgets: held, ask, view })
    }

    /// Ends a call: its token entries become `tokens` used and its budget holds become
    /// `usd` spent (a failed call passes what it used, often nothing).
    pub fn settle(&self, reservation: Reservation, tokens: u64, usd: f64) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (log, at) in &reservation.tokens {
            if let Some(log) = state.logs.get_mut(log) {
                log.replace(*at, reservation.ask.tokens, tokens);
            }
        }
        for name in &reservation.budgets {
            if let Some(budget) = state.budgets.get_mut(name) {
                budget.reserved = (budget.reserved - reservation.ask.usd).max(0.0);
                budget.spent += usd;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(rpm: Option<u64>, tpm: Option<u64>, key_budget: Option<f64>, team_budget: Option<f64>) -> Caller {
        let budget = |usd: Option<f64>| usd.map(|usd| BudgetRecord { usd, period: "day".into() });
        Caller::new(
            KeyRecord { id: "key_a".into(), team: "t".into(), rpm, tpm, budget: budget(key_budget), ..KeyRecord::default() },
            vec![Arc::new(TeamRecord {
                id: "t".into(),
                parent: None,
                budget: budget(team_budget),
                rpm: None,
                tpm: None,
                metadata: "{}".into(),
                created_ms: 0,
            })],
        )
    }

    fn nothing(_: &BudgetScope, _: i64) -> Result<f64, String> {
        Ok(0.0)
    }

    #[test]
    fn no_sixty_second_window_admits_more_than_the_limit() {
        let ledger = Ledger::default();
        let c = caller(Some(10), None, None, None);
        let mut admitted = Vec::new();
        // A request every second for three minutes.
        for t in 0..180 {
            if let Ok(r) = ledger.reserve(&c, None, Ask::default(), t * 1000, &nothing) {
                admitted.push(t * 1000);
                ledger.settle(r, 0, 0.0);
            }
        }
        for &start in &admitted {
            let n = admitted.iter().filter(|&&at| at >= start && at < start + WINDOW_MS).count();
            assert!(n <= 10, "{n} admitted in the window from {start}");
        }
        assert_eq!(admitted.len(), 30, "10 in each minute");
        // At 179.5 s the last minute holds the ten admitted from 120 s; room comes when the
        // first of them leaves the window, half a second later.
        let refused = ledger.reserve(&c, None, Ask::default(), 179_500, &nothing).unwrap_err();
        assert_eq!(refused, Refusal::Rate { scope: "key key_a".into(), what: "requests", limit: 10, retry_after_ms: 500 });
    }

    #[test]
    fn token_limits_hold_the_estimate_then_the_real_usage() {
        let ledger = Ledger::default();
        let c = caller(None, Some(1000), None, None);
        let big = ledger.reserve(&c, None, Ask { tokens: 900, usd: 0.0 }, 0, &nothing).unwrap();
        assert_eq!(big.view.tokens.unwrap().remaining, 100);
        assert!(ledger.reserve(&c, None, Ask { tokens: 200, usd: 0.0 }, 1, &nothing).is_err());
        ledger.settle(big, 50, 0.0);
        let next = ledger.reserve(&c, None, Ask { tokens: 900, usd: 0.0 }, 2, &nothing).unwrap();
        assert_eq!(next.view.tokens.unwrap().remaining, 50);
    }

    #[test]
    fn budgets_hold_worst_cases_and_never_admit_past_the_limit() {
        let ledger = Ledger::default();
        // The team budget is the tighter: $1.00, with $0.25 spent before this process began
        // (amounts exact in binary, so the edge is exact too).
        let c = caller(None, None, Some(5.0), Some(1.0));
        let spent = |scope: &BudgetScope, _: i64| Ok(if *scope == BudgetScope::Team("t".into()) { 0.25 } else { 0.0 });
        let ask = |usd| Ask { tokens: 0, usd };
        let held: Vec<_> = (0..10).map_while(|i| ledger.reserve(&c, None, ask(0.125), i, &spent).ok()).collect();
        assert_eq!(held.len(), 6, "0.25 + 6 × 0.125 is exactly the limit; a seventh would pass it");
        let refused = ledger.reserve(&c, None, ask(0.125), 10, &spent).unwrap_err();
        assert!(refused.to_string().contains("budget exceeded for team t: $1 per day"), "{refused}");
        // Each call cost half its worst case: room comes back, exactly.
        for r in held {
            ledger.settle(r, 0, 0.0625);
        }
        let last = ledger.reserve(&c, None, ask(0.375), 20, &spent).unwrap();
        assert!(ledger.reserve(&c, None, ask(0.001), 21, &spent).is_err());
        ledger.settle(last, 0, 0.375);
        // A new day starts from what the traces say.
        assert!(ledger.reserve(&c, None, ask(0.75), 86_400_000, &spent).is_ok());
        assert!(ledger.reserve(&c, None, ask(0.001), 86_400_001, &spent).is_err());
    }
}
