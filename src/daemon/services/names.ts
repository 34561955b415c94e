import { randomInt } from 'node:crypto';

const ADJECTIVES = ['amber', 'brisk', 'calm', 'clever', 'dusty', 'eager', 'fuzzy', 'gentle', 'happy', 'icy', 'jolly', 'keen', 'lucky', 'mellow', 'nimble', 'olive', 'plucky', 'quiet', 'rapid', 'sunny', 'tidy', 'upbeat', 'vivid', 'witty', 'young', 'zesty'];
const NOUNS = ['otter', 'falcon', 'badger', 'lynx', 'heron', 'panda', 'gecko', 'walrus', 'koala', 'marten', 'puffin', 'raven', 'tapir', 'yak', 'bison', 'crane', 'dingo', 'ferret', 'ibis', 'jackal', 'lemur', 'moose', 'newt', 'ocelot', 'quokka', 'seal'];

/** Friendly DNS-label names (they become `<name>.vm`); the caller retries on collision. */
export function randomVmName(): string {
  return `${ADJECTIVES[randomInt(ADJECTIVES.length)]}-${NOUNS[randomInt(NOUNS.length)]}`;
}
