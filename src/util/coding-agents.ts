/** The catalog image coding agents run in by default (src/images/catalog.ts builds it). */
export const AGENTS_IMAGE_NAME = 'debian-bookworm-agents';
