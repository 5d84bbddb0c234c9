// Runs after `vite build`: puts Swagger UI (from the swagger-ui-dist package)
// and our own page for it (src/swagger.html) into dist/swagger/, served by
// the control plane at /docs, and restores dist/.gitkeep, which keeps the
// directory in git so the Go embed compiles in a fresh clone.
import { copyFileSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const web = join(here, '..');
const dist = join(web, 'dist');
const out = join(dist, 'swagger');
const require = createRequire(import.meta.url);
const swaggerDir = dirname(require.resolve('swagger-ui-dist/package.json'));

mkdirSync(out, { recursive: true });
for (const name of ['swagger-ui.css', 'swagger-ui-bundle.js', 'swagger-ui-standalone-preset.js', 'LICENSE', 'NOTICE']) {
  const from = join(swaggerDir, name);
  if (!existsSync(from)) {
    if (name === 'LICENSE' || name === 'NOTICE') continue;
    throw new Error(`swagger-ui-dist has no ${name}`);
  }
  copyFileSync(from, join(out, name));
}
copyFileSync(join(web, 'src', 'swagger.html'), join(out, 'index.html'));
writeFileSync(join(dist, '.gitkeep'), '');
console.log('dist/swagger: Swagger UI and its page copied');
