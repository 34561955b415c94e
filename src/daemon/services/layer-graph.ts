import type { DiskLayerRow } from '../../store/repos.js';

/**
 * Pure: the layers that must be kept — every VM top and every snapshot layer, and every layer
 * below one of those in its chain. Ids that name no row are ignored.
 */
export function liveLayerIds(
  layers: ReadonlyArray<Pick<DiskLayerRow, 'id' | 'parent_id'>>,
  vmTops: ReadonlyArray<string | null>,
  snapshotLayers: ReadonlyArray<string | null>,
): Set<string> {
  const byId = new Map(layers.map((l) => [l.id, l]));
  const live = new Set<string>();
  for (const start of [...vmTops, ...snapshotLayers]) {
    // Each chain is walked until a layer already known live (its ancestors are then live too).
    for (let id = start; id && !live.has(id); ) {
      const l = byId.get(id);
      if (!l) break;
      live.add(id);
      id = l.parent_id;
    }
  }
  return live;
}

/** Pure: the chain from a layer down to its bottom (the layer itself first). Stops at a cycle or an unknown id. */
export function chainOf(layers: ReadonlyArray<Pick<DiskLayerRow, 'id' | 'parent_id'>>, top: string): string[] {
  const byId = new Map(layers.map((l) => [l.id, l]));
  const chain: string[] = [];
  for (let id: string | null = top; id && !chain.includes(id); ) {
    const l = byId.get(id);
    if (!l) break;
    chain.push(id);
    id = l.parent_id;
  }
  return chain;
}
