"""Webhooks (docs/webhooks.md): who may be called (`targets`), what is sent (`payload`) and
the one sender per delivery across API replicas (`dispatcher`)."""
