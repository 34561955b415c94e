import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/**
 * The official Firecracker API description (Swagger 2.0) and a validator for the subset of JSON
 * schema it uses. Shared by the contract tests and the FAKE Firecracker, so both hold banger's
 * requests to the same rules as the real VMM.
 */
export interface Schema {
  type?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  enum?: unknown[];
  items?: Schema;
  $ref?: string;
  minimum?: number;
  maximum?: number;
  additionalProperties?: boolean | Schema;
  [keyword: string]: unknown;
}

export interface Parameter {
  name: string;
  in: 'body' | 'path' | 'query' | 'header' | 'formData';
  required?: boolean;
  schema?: Schema;
}

export interface Operation {
  operationId?: string;
  parameters?: Parameter[];
  responses: Record<string, { schema?: Schema }>;
}

export interface SwaggerSpec {
  swagger: string;
  info: { version: string };
  paths: Record<string, Record<string, Operation>>;
  definitions: Record<string, Schema>;
}

/** The directory holding package.json, found upwards from `from` (works from src/ and dist/). */
export function projectRoot(from = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

/** The spec lives next to the project, never inside it; BANGER_FC_SPEC points elsewhere. */
export function firecrackerSpecPath(): string {
  return process.env.BANGER_FC_SPEC || join(projectRoot(), '..', 'shared', 'reference', 'firecracker-api.yaml');
}

export function loadFirecrackerSpec(path = firecrackerSpecPath()): SwaggerSpec {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read the Firecracker API spec at ${path} (set BANGER_FC_SPEC): ${(e as Error).message}`);
  }
  const spec = parse(text) as SwaggerSpec;
  if (spec?.swagger !== '2.0' || typeof spec.paths !== 'object' || typeof spec.definitions !== 'object') {
    throw new Error(`${path} is not a Swagger 2.0 document`);
  }
  return spec;
}

const VALIDATED = new Set(['type', 'properties', 'required', 'enum', 'items', '$ref', 'minimum', 'maximum', 'additionalProperties']);
/** Documentation only. `format` is ignored: the one odd use (an IPv4 regex on MMDS) is nothing banger sends. */
const ANNOTATIONS = new Set(['description', 'default', 'format', 'readOnly', 'example']);

/** Firecracker's `checked_id`: path resource ids. */
const RESOURCE_ID = /^[A-Za-z0-9_]+$/;

export interface RouteMatch {
  template: string;
  operation: Operation;
  params: Record<string, string>;
}

export interface RequestCheck {
  /** Empty when the request is acceptable. */
  errors: string[];
  match?: RouteMatch;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const describe = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

export class SpecValidator {
  constructor(readonly spec: SwaggerSpec) {
    // A keyword this validator does not implement would be silently ignored: refuse instead.
    for (const [name, schema] of Object.entries(spec.definitions)) this.checkKeywords(schema, `#/definitions/${name}`);
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        for (const p of op.parameters ?? []) if (p.schema) this.checkKeywords(p.schema, `${method} ${path} ${p.name}`);
      }
    }
  }

  definition(name: string): Schema {
    const d = this.spec.definitions[name];
    if (!d) throw new Error(`the spec has no definition ${name}`);
    return d;
  }

  validateDefinition(name: string, value: unknown): string[] {
    return this.validate(this.definition(name), value);
  }

  /** Errors (JSON-path prefixed); unknown properties are errors, as Firecracker denies unknown fields. */
  validate(schema: Schema, value: unknown, at = '$'): string[] {
    const s = this.resolve(schema);
    const errors: string[] = [];
    if (s.type !== undefined && !this.hasType(s.type, value)) {
      return [`${at}: expected ${s.type}, got ${describe(value)}`];
    }
    if (s.enum && !s.enum.includes(value)) errors.push(`${at}: ${JSON.stringify(value)} is not one of ${JSON.stringify(s.enum)}`);
    if (typeof value === 'number') {
      if (s.minimum !== undefined && value < s.minimum) errors.push(`${at}: ${value} is below the minimum ${s.minimum}`);
      if (s.maximum !== undefined && value > s.maximum) errors.push(`${at}: ${value} is above the maximum ${s.maximum}`);
    }
    if (Array.isArray(value) && s.items) {
      for (const [i, v] of value.entries()) errors.push(...this.validate(s.items, v, `${at}[${i}]`));
    }
    if (isObject(value) && (s.type === 'object' || s.properties)) {
      const props = s.properties ?? {};
      for (const r of s.required ?? []) if (!(r in value)) errors.push(`${at}: missing required field ${r}`);
      for (const [k, v] of Object.entries(value)) {
        const p = props[k];
        if (p) errors.push(...this.validate(p, v, `${at}.${k}`));
        else if (isObject(s.additionalProperties)) errors.push(...this.validate(s.additionalProperties, v, `${at}.${k}`));
        else if (s.additionalProperties !== true) errors.push(`${at}: unknown field ${k}`);
      }
    }
    return errors;
  }

  /** The operation for `method` on `path` (query string ignored), with its path parameters. */
  route(method: string, path: string): RouteMatch | undefined {
    const segments = path.split('?')[0]!.split('/');
    const candidates = Object.entries(this.spec.paths)
      .map(([template, ops]) => ({ template, ops, parts: template.split('/') }))
      .filter((c) => c.parts.length === segments.length)
      // Literal templates win over parameterised ones.
      .sort((a, b) => a.template.split('{').length - b.template.split('{').length);
    for (const c of candidates) {
      const params: Record<string, string> = {};
      const fits = c.parts.every((part, i) => {
        const seg = segments[i] as string;
        const name = /^\{(.+)\}$/.exec(part)?.[1];
        if (name === undefined) return part === seg;
        params[name] = seg;
        return true;
      });
      const operation = c.ops[method.toLowerCase()];
      if (fits && operation) return { template: c.template, operation, params };
    }
    return undefined;
  }

  /**
   * Everything Firecracker checks before it looks at its own state: method and path, body
   * presence, JSON schema, resource-id charset, and path id == body id.
   */
  checkRequest(method: string, path: string, body: unknown): RequestCheck {
    const match = this.route(method, path);
    if (!match) return { errors: [`Invalid request method and/or path: ${method} ${path}.`] };
    const bodyParam = match.operation.parameters?.find((p) => p.in === 'body');
    const errors: string[] = [];
    if (body === undefined) {
      if (method === 'GET') return { errors, match };
      if (bodyParam && (bodyParam.required || method === 'PUT')) return { errors: [`Empty ${method} request.`], match };
    } else if (method === 'GET') {
      return { errors: ['GET request cannot have a body.'], match };
    } else if (!bodyParam) {
      return { errors: [`${method} ${match.template} takes no body.`], match };
    }
    for (const [name, id] of Object.entries(match.params)) {
      if (id === '') errors.push('The ID cannot be empty.');
      else if (!RESOURCE_ID.test(id)) errors.push('API Resource IDs can only contain alphanumeric characters and underscores.');
      else if (isObject(body) && name in body && body[name] !== id) {
        errors.push(`The id from the path (${id}) does not match the id from the body (${JSON.stringify(body[name])}).`);
      }
    }
    if (body !== undefined && bodyParam?.schema) errors.push(...this.validate(bodyParam.schema, body));
    return { errors, match };
  }

  private resolve(schema: Schema): Schema {
    let s = schema;
    for (let depth = 0; s.$ref !== undefined; depth++) {
      const name = /^#\/definitions\/(.+)$/.exec(s.$ref)?.[1];
      if (name === undefined || depth > 20) throw new Error(`unsupported $ref ${s.$ref}`);
      // Swagger 2.0: siblings of $ref are ignored.
      s = this.definition(name);
    }
    return s;
  }

  private hasType(type: string, v: unknown): boolean {
    switch (type) {
      case 'object':
        return isObject(v);
      case 'array':
        return Array.isArray(v);
      case 'string':
        return typeof v === 'string';
      case 'boolean':
        return typeof v === 'boolean';
      case 'integer':
        return Number.isInteger(v);
      case 'number':
        return typeof v === 'number' && Number.isFinite(v);
      default:
        throw new Error(`unsupported schema type ${type}`);
    }
  }

  private checkKeywords(schema: Schema, at: string): void {
    for (const k of Object.keys(schema)) {
      if (!VALIDATED.has(k) && !ANNOTATIONS.has(k)) throw new Error(`${at}: schema keyword "${k}" is not supported by the test validator`);
    }
    for (const [k, p] of Object.entries(schema.properties ?? {})) this.checkKeywords(p, `${at}.${k}`);
    if (schema.items) this.checkKeywords(schema.items, `${at}[]`);
    if (isObject(schema.additionalProperties)) this.checkKeywords(schema.additionalProperties as Schema, `${at}{}`);
  }
}

/** True when the official spec can be read (it lives in ../shared, which a user's clone lacks). */
export function firecrackerSpecAvailable(): boolean {
  return existsSync(firecrackerSpecPath());
}

/** Why the contract tests skip without the spec: they test against it and nothing else. */
export const NO_FIRECRACKER_SPEC = `the official Firecracker API spec is not at ${firecrackerSpecPath()} (it sits in ../shared beside CI's clone; set BANGER_FC_SPEC to run these contract tests)`;

/**
 * A LENIENT stand-in for the spec: the paths and methods banger's driver uses (the same ones
 * src/vmm/firecracker/requests.ts builds), with any body accepted and any answer valid. For tests
 * that need a Firecracker-shaped process (e.g. crash recovery) but test nothing of the API itself;
 * the contract tests always use the official spec.
 */
export function lenientFirecrackerSpec(): SwaggerSpec {
  const body = { parameters: [{ name: 'body', in: 'body' as const, required: true, schema: {} }], responses: {} };
  const get = { responses: {} };
  return {
    swagger: '2.0',
    info: { version: '1.16.1-lenient' },
    paths: {
      '/': { get },
      '/version': { get },
      '/machine-config': { get, put: body },
      '/boot-source': { put: body },
      '/drives/{drive_id}': {
        put: { ...body, parameters: [...body.parameters, { name: 'drive_id', in: 'path', required: true }] },
        patch: { ...body, parameters: [...body.parameters, { name: 'drive_id', in: 'path', required: true }] },
      },
      '/network-interfaces/{iface_id}': { put: { ...body, parameters: [...body.parameters, { name: 'iface_id', in: 'path', required: true }] } },
      '/vsock': { put: body },
      '/logger': { put: body },
      '/actions': { put: body },
      '/vm': { patch: body },
      '/vm/config': { get },
      '/snapshot/create': { put: body },
      '/snapshot/load': { put: body },
    },
    definitions: { InstanceInfo: {}, FirecrackerVersion: {}, MachineConfiguration: {}, FullVmConfiguration: {} },
  };
}
