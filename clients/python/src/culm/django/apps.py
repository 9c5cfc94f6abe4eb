from django.apps import AppConfig


class CulmConfig(AppConfig):
    """`culm.django`: no models and no migrations (the outbox table belongs to culm)."""

    name = "culm.django"
    label = "culm"
    verbose_name = "culm"
