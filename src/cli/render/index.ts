// Chooses a progress renderer: a bar on a terminal, plain lines otherwise, JSON lines on
// request, or nothing. The bar's library loads only when a bar is drawn.
import { JsonRenderer } from './json.js';
import { LinesRenderer } from './lines.js';
import type { MoveRenderer, ProgressMode } from './types.js';

export type { MoveRenderer, ProgressMode } from './types.js';
export { PROGRESS_MODES } from './types.js';

const silent: MoveRenderer = {
  record: () => undefined,
  note: (text) => process.stderr.write(`${text}\n`),
  stop: () => undefined,
};

export async function progressRenderer(mode: ProgressMode = 'auto'): Promise<MoveRenderer> {
  const m = mode === 'auto' ? (process.stderr.isTTY ? 'bar' : 'lines') : mode;
  switch (m) {
    case 'bar':
      return new (await import('./bar.js')).BarRenderer();
    case 'lines':
      return new LinesRenderer();
    case 'json':
      return new JsonRenderer();
    case 'none':
      return silent;
  }
}
