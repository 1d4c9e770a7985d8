"""MLflow tracking: the only package that imports mlflow (lazily: tracking off never needs it)."""
from mdist.tracking.journal import QUEUE_DIR, Journal, journals
from mdist.tracking.tracker import ARTIFACTS_DIR, HTTP_BOUNDS, Tracker, artifact_location, client_for, flatten, tracking_uri

__all__ = ["ARTIFACTS_DIR", "HTTP_BOUNDS", "QUEUE_DIR", "Journal", "Tracker", "artifact_location", "client_for", "flatten", "journals", "tracking_uri"]
