"""LLM generation of synthetic Q&A: prompt templates (files), backends behind one interface, a request cache,
a managed server, strict parsing, enrichment and verification."""
