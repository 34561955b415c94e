import type { App } from '../app.js';
import type { Router } from '../http.js';
import { coreRoutes } from '../routes-core.js';

/** Builds the services on the App's shared mechanisms and mounts their routes. */
export async function installServices(app: App, router: Router): Promise<void> {
  router.add(...coreRoutes(app));
}
