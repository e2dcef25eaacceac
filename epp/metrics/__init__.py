"""Model-server metrics: scraping each endpoint's /metrics into engine-neutral endpoint state."""
