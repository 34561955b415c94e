import { BangerError } from '../../api/errors.js';
import type { ImageService } from './images.js';
import type { KernelService } from './kernels.js';

/**
 * `kernel rm [--force]`, above both services: with --force the images that boot the kernel go
 * first (never VMs: a VM cannot lose its disks, so a kernel a VM uses is refused either way), and
 * a kernel that does not exist is not an error.
 */
export async function removeKernel(
  d: { kernels: KernelService; images: Pick<ImageService, 'removeAllForKernel'> },
  ref: string,
  force: boolean,
): Promise<string> {
  let id: string;
  try {
    id = d.kernels.row(ref).id;
  } catch (e) {
    if (force && e instanceof BangerError && e.code === 'not_found') return ref;
    throw e;
  }
  if (force && d.kernels.vmNames(id).length === 0) await d.images.removeAllForKernel(id);
  return d.kernels.remove(ref, force);
}
