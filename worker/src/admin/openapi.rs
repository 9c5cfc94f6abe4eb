//! The route table. One table feeds both axum and the OpenAPI document, so every
//! endpoint that is served is documented, with the scope that guards it.
use super::{AdminState, dead::*, jobs::*, probes::*, queues::*, require, schedules::*};
use crate::config::Scope;
use axum::middleware;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(OpenApi)]
#[openapi(
    info(title = "culm admin API", version = "1", description = "Enqueue jobs, inspect and steer culm's queues."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the route table: open probes, then one group per scope.
pub(super) fn table(state: AdminState) -> (axum::Router<AdminState>, utoipa::openapi::OpenApi) {
    let guard = |scope: Scope| middleware::from_fn_with_state((state.clone(), scope), require);
    let open = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json));
    let enqueue = OpenApiRouter::new()
        .routes(routes!(enqueue_one))
        .routes(routes!(enqueue_batch))
        .route_layer(guard(Scope::Enqueue));
    let read = OpenApiRouter::new()
        .routes(routes!(get_job))
        .routes(routes!(list_queues))
        .routes(routes!(get_queue))
        .routes(routes!(list_dead))
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule))
        .route_layer(guard(Scope::Read));
    let admin = OpenApiRouter::new()
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(retry_dead))
        .routes(routes!(purge_dead))
        .routes(routes!(trigger_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .route_layer(guard(Scope::Admin));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(open)
        .merge(enqueue)
        .merge(read)
        .merge(admin)
        .split_for_parts();
    let json = api.to_json().unwrap_or_else(|_| "{}".to_owned());
    let _ = state.inner.openapi.set(json);
    (router, api)
}
