//! Routing validation: a banking job outside the critical tier, or sent to an undeclared
//! queue, is named at start-up.
use culm_core::{Job, JobContext, JobError, Outcome, Registry, Tier};
use culm_worker::{config::Config, store::Routing};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CardLoad {
    account: String,
}

impl Job for CardLoad {
    const NAME: &'static str = "test.card_load";
    const QUEUE: &'static str = "galileo";
    const TIERS: &'static [Tier] = &[Tier::Critical];
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Ok(Outcome::done())
    }
}

#[test]
fn banking_jobs_outside_critical_and_undeclared_queues_are_named() {
    let mut registry = Registry::new();
    registry.register::<CardLoad>().expect("register");
    let config = Config::defaults().expect("defaults");
    let mut routing = Routing::from_config(&config, &registry);
    assert!(routing.problems(&registry).is_empty());

    routing.routes.insert("test.card_load".into(), "unit21".into());
    let p = routing.problems(&registry);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("test.card_load") && p[0].contains("unit21") && p[0].contains("critical"),
        "{p:?}"
    );

    routing.routes.insert("test.card_load".into(), "nowhere".into());
    let p = routing.problems(&registry);
    assert!(
        p[0].contains("test.card_load") && p[0].contains("nowhere") && p[0].contains("not declared"),
        "{p:?}"
    );

    routing.routes.insert("test.unknown".into(), "galileo".into());
    assert_eq!(routing.problems(&registry).len(), 2, "every problem is listed at once");
}

#[test]
fn the_shipped_catalog_routes_cleanly() {
    let registry = culm_jobs::registry().expect("registry");
    let config = Config::defaults().expect("defaults");
    assert_eq!(
        Routing::from_config(&config, &registry).problems(&registry),
        Vec::<String>::new()
    );
}
