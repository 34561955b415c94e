import type { NetPolicy } from '../../src/host/netplan.js';
import type { DoctorInfo, HostNetOps, Pinning } from '../../src/host/privileged.js';

/** A named fake: records each call and answers fixed values. */
export class RecordingOps implements HostNetOps {
  readonly namespace = undefined;
  readonly calls: unknown[][] = [];
  async doctorInfo(): Promise<DoctorInfo> {
    this.calls.push(['doctorInfo']);
    return { mode: 'root', detail: 'fake', firewall: 'nft', pinning: 'nft' };
  }
  async pinning(): Promise<Pinning> {
    this.calls.push(['pinning']);
    return 'ebtables';
  }
  async ensureBridge(name: string, addressCidr: string) {
    this.calls.push(['ensureBridge', name, addressCidr]);
  }
  async deleteBridge(name: string) {
    this.calls.push(['deleteBridge', name]);
  }
  async createTap(name: string, bridge: string) {
    this.calls.push(['createTap', name, bridge]);
  }
  async deleteTap(name: string, bridge: string) {
    this.calls.push(['deleteTap', name, bridge]);
  }
  async listTaps(bridge: string) {
    this.calls.push(['listTaps', bridge]);
    return ['bg0.0'];
  }
  async routeVmDomain(bridge: string, dnsIp: string) {
    this.calls.push(['routeVmDomain', bridge, dnsIp]);
    return true;
  }
  async unrouteVmDomain(bridge: string) {
    this.calls.push(['unrouteVmDomain', bridge]);
  }
  async applyPolicy(spec: NetPolicy) {
    this.calls.push(['applyPolicy', spec]);
  }
  async removePolicy(bridge: string) {
    this.calls.push(['removePolicy', bridge]);
  }
  async currentNatIps(bridge: string) {
    this.calls.push(['currentNatIps', bridge]);
    return ['172.30.0.2'];
  }
}
