import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { HELPER_OPS, type HelperOp } from '../host/helper-wire.js';
import {
  LEGACY_TAP_RE,
  MAX_PINS,
  type NetPolicy,
  normalisePolicy,
  type TapPin,
  validateBridgeName,
  validateOwnTapName,
  validateTapName,
} from '../host/netplan.js';
import type { HostNetOps } from '../host/privileged.js';
import { type Cidr, formatCidr, parseCidr, parseIpv4 } from '../util/ipv4.js';

/**
 * The helper's closed request schema: one strict object per operation (an unknown op, a missing
 * or extra field, a wrong type is refused before anything runs), then banger's scope on the
 * values (its bridge and TAP names, private networks, the optional bridge allowlist), then the
 * call. PrivilegedOps repeats its own checks underneath (owned links only, no overlapping CIDR).
 */

/** Every string field: interface names are 15 characters, addresses and CIDRs 18. */
const text = z.string().max(64);

const tapPinSchema = z.strictObject({ tap: text, mac: text, ip: text, nat: z.boolean() });
/** NetPolicy, whole: a field added to NetPolicy fails the typecheck below until it is named here. */
const dnsRedirectSchema = z.strictObject({ ip: text, port: z.number().int().min(1).max(65_535) });
const netPolicySchema = z.strictObject({ bridge: text, cidr: text, pins: z.array(tapPinSchema).max(MAX_PINS), dns: dnsRedirectSchema.optional() });

type SameKeys<A, B> = [keyof A] extends [keyof B] ? ([keyof B] extends [keyof A] ? true : false) : false;
const policyKeysMatch: SameKeys<NetPolicy, z.infer<typeof netPolicySchema>> = true;
const pinKeysMatch: SameKeys<TapPin, z.infer<typeof tapPinSchema>> = true;
const policyAssignable: (p: z.infer<typeof netPolicySchema>) => NetPolicy = (p) => p;
void [policyKeysMatch, pinKeysMatch, policyAssignable];

const none = z.strictObject({});
const bridgeOnly = z.strictObject({ bridge: text });
const tapArgs = z.strictObject({ name: text, bridge: text });

export const ARGS_SCHEMAS = {
  doctorInfo: none,
  pinning: none,
  ensureBridge: z.strictObject({ name: text, addressCidr: text }),
  deleteBridge: z.strictObject({ name: text }),
  createTap: tapArgs,
  deleteTap: tapArgs,
  listTaps: bridgeOnly,
  routeVmDomain: z.strictObject({ bridge: text, dnsIp: text }),
  unrouteVmDomain: bridgeOnly,
  applyPolicy: z.strictObject({ policy: netPolicySchema }),
  removePolicy: bridgeOnly,
  currentNatIps: bridgeOnly,
} satisfies Record<HelperOp, z.ZodType>;

type ArgsOf = { [K in HelperOp]: z.infer<(typeof ARGS_SCHEMAS)[K]> };
export type HelperRequest = { [K in HelperOp]: { op: K; args: ArgsOf[K] } }[HelperOp];

const envelope = z.strictObject({ op: z.string().max(64), args: z.record(z.string(), z.unknown()) });
const OPS = new Set<string>(HELPER_OPS);

const bad = (message: string, fix?: string) => new BangerError('bad_request', message, fix ? { fix } : {});

function issues(e: z.ZodError): string {
  return e.issues
    .slice(0, 3)
    .map((i) => `${i.path.join('.') || '(request)'}: ${i.message}`)
    .join('; ');
}

/** One request line (without its newline) → a typed request; BangerError('bad_request') for anything else. */
export function parseRequest(line: string): HelperRequest {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    throw bad('malformed request: not JSON', 'send one JSON object {op, args} on one line');
  }
  const env = envelope.safeParse(json);
  if (!env.success) throw bad(`malformed request: ${issues(env.error)}`, 'send one JSON object {op, args} and nothing else');
  const { op, args } = env.data;
  if (!OPS.has(op)) throw bad(`unknown operation ${JSON.stringify(op)}`, `the helper's operations are ${HELPER_OPS.join(', ')}`);
  const parsed = ARGS_SCHEMAS[op as HelperOp].safeParse(args);
  if (!parsed.success) throw bad(`invalid arguments for ${op}: ${issues(parsed.error)}`);
  return { op, args: parsed.data } as HelperRequest;
}

/** Networks a banger bridge may use: private (RFC 1918) and shared (RFC 6598) space, never a public range. */
const PRIVATE_NETS = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'].map((c) => parseCidr(c));

function assertPrivate(net: Cidr, what: string): void {
  const inside = PRIVATE_NETS.some((p) => net.network >= p.network && net.broadcast <= p.broadcast);
  if (!inside) {
    throw new BangerError('bad_request', `refusing ${what} ${formatCidr(net)}: the helper only gives bridges private networks`, {
      fix: 'set `cidr` and `bridge_ip` in config.toml to a range inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10',
    });
  }
}

export interface Scope {
  /** When set, the only bridges the helper touches (`--bridge`); else any banger* name. */
  bridges?: ReadonlySet<string>;
}

function checkBridge(name: string, scope: Scope): void {
  validateBridgeName(name);
  if (scope.bridges && !scope.bridges.has(name)) {
    throw new BangerError('conflict', `refusing bridge ${name}: this helper only manages ${[...scope.bridges].join(', ')}`, {
      fix: `set bridge_name in config.toml to one of them, or start bangerd-root with --bridge ${name}`,
    });
  }
}

/** banger's scope on the values: throws before anything runs when a name or network is not banger's. */
export function checkScope(req: HelperRequest, scope: Scope): void {
  switch (req.op) {
    case 'doctorInfo':
    case 'pinning':
      return;
    case 'ensureBridge': {
      checkBridge(req.args.name, scope);
      assertPrivate(parseCidr(req.args.addressCidr), 'the bridge network');
      return;
    }
    case 'deleteBridge':
      checkBridge(req.args.name, scope);
      return;
    case 'createTap':
      checkBridge(req.args.bridge, scope);
      validateTapName(req.args.name, req.args.bridge);
      return;
    case 'deleteTap':
      checkBridge(req.args.bridge, scope);
      validateOwnTapName(req.args.name, req.args.bridge);
      return;
    case 'routeVmDomain': {
      checkBridge(req.args.bridge, scope);
      const ip = parseIpv4(req.args.dnsIp, 'DNS address');
      assertPrivate({ address: ip, prefix: 32, network: ip, broadcast: ip }, 'the DNS address');
      return;
    }
    case 'applyPolicy': {
      checkBridge(req.args.policy.bridge, scope);
      const p = normalisePolicy(req.args.policy);
      assertPrivate(parseCidr(p.cidr), 'the VM network');
      // Legacy bgtap<N> names carry no bridge in them, and nft's bridge table matches them on any
      // bridge: through the helper only the bridge's own TAP names are pinned.
      const legacy = p.pins.find((pin) => LEGACY_TAP_RE.test(pin.tap));
      if (legacy) {
        throw new BangerError('bad_request', `refusing legacy TAP name ${legacy.tap} through the helper: its name does not say which bridge it is on`, {
          fix: 'restart the VM so it gets a TAP named after its bridge',
        });
      }
      return;
    }
    case 'listTaps':
    case 'unrouteVmDomain':
    case 'removePolicy':
    case 'currentNatIps':
      checkBridge(req.args.bridge, scope);
      return;
  }
}

/** Runs a validated, in-scope request. */
export async function execute(req: HelperRequest, ops: HostNetOps): Promise<unknown> {
  switch (req.op) {
    case 'doctorInfo':
      return ops.doctorInfo();
    case 'pinning':
      return ops.pinning();
    case 'ensureBridge':
      return ops.ensureBridge(req.args.name, req.args.addressCidr).then(() => null);
    case 'deleteBridge':
      return ops.deleteBridge(req.args.name).then(() => null);
    case 'createTap':
      return ops.createTap(req.args.name, req.args.bridge).then(() => null);
    case 'deleteTap':
      return ops.deleteTap(req.args.name, req.args.bridge).then(() => null);
    case 'listTaps':
      return ops.listTaps(req.args.bridge);
    case 'routeVmDomain':
      return ops.routeVmDomain(req.args.bridge, req.args.dnsIp);
    case 'unrouteVmDomain':
      return ops.unrouteVmDomain(req.args.bridge).then(() => null);
    case 'applyPolicy':
      return ops.applyPolicy(req.args.policy).then(() => null);
    case 'removePolicy':
      return ops.removePolicy(req.args.bridge).then(() => null);
    case 'currentNatIps':
      return ops.currentNatIps(req.args.bridge);
  }
}
