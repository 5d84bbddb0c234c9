// Vite's configuration for the dashboard. `npm run dev` serves the app with
// hot reload and proxies the API (REST and the terminal's WebSocket) to a
// running control plane: WRENN_URL, or http://127.0.0.1:8080.
import { defineConfig, type ProxyOptions } from 'vite';
import react from '@vitejs/plugin-react';

const target = process.env.WRENN_URL || 'http://127.0.0.1:8080';
const targetOrigin = new URL(target).origin;

// The API checks a WebSocket's Origin against its own host; through the
// proxy the page's origin is the dev server's, so requests are passed on as
// if they came from the control plane's own origin.
const api: ProxyOptions = {
  target,
  changeOrigin: true,
  ws: true,
  configure(proxy) {
    proxy.on('proxyReqWs', (req) => req.setHeader('Origin', targetOrigin));
    proxy.on('proxyReq', (req) => {
      if (req.getHeader('Origin')) req.setHeader('Origin', targetOrigin);
    });
  },
};

export default defineConfig({
  plugins: [react()],
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      '/v1': api,
      '/openapi.yaml': { target, changeOrigin: true },
      '/healthz': { target, changeOrigin: true },
      '/docs': { target, changeOrigin: true },
    },
  },
});
