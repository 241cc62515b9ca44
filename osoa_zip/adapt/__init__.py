"""The OSOA engine: code each batch under the current model, then adapt it."""
