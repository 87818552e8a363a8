// The web console: built into web/dist, served by the console server (src/console).
// Build from the repo root: npx vite build --config web/vite.config.ts
// Dev: FERRY_CONSOLE=https://127.0.0.1:PORT npx vite --config web/vite.config.ts
//      (proxies /api to a running console server).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const here = fileURLToPath(new URL('.', import.meta.url));
const repo = fileURLToPath(new URL('..', import.meta.url));
const consoleUrl = process.env.FERRY_CONSOLE;

export default defineConfig({
  root: here,
  base: './',
  plugins: [react()],
  // es2022: noVNC (@novnc/novnc) probes the browser's video decoders with a top-level await.
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: true, target: 'es2022' },
  server: {
    // The console imports the shared action definitions from ../src.
    fs: { allow: [repo] },
    ...(consoleUrl ? { proxy: { '/api': { target: consoleUrl, changeOrigin: true, secure: false } } } : {}),
  },
});
