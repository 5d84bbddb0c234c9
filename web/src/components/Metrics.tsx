// A running sandbox's CPU, memory and disk, polled while shown, with a short
// history drawn as sparklines.
import { useEffect, useRef, useState } from 'react';
import { api, ApiError, type Metrics as M } from '../api';
import { dateTime } from '../format';
import { ErrorBox, Spinner } from './ui';

const POLL_MS = 2000;
const HISTORY = 60;

export function Metrics({ sandboxId, active }: { sandboxId: string; active: boolean }) {
  const [latest, setLatest] = useState<M | null>(null);
  const [error, setError] = useState<unknown>(null);
  const history = useRef<{ cpu: number[]; mem: number[] }>({ cpu: [], mem: [] });

  useEffect(() => {
    if (!active) return;
    let stopped = false;
    let timer: number | undefined;
    const tick = async () => {
      try {
        const m = await api.metrics(sandboxId);
        if (stopped) return;
        const h = history.current;
        h.cpu = [...h.cpu, m.cpu_used_pct].slice(-HISTORY);
        h.mem = [...h.mem, m.mem_total_mib ? (100 * m.mem_used_mib) / m.mem_total_mib : 0].slice(-HISTORY);
        setLatest(m);
        setError(null);
      } catch (err) {
        if (!stopped) setError(err);
      }
      if (!stopped) timer = window.setTimeout(tick, POLL_MS);
    };
    tick();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, [sandboxId, active]);

  if (!latest) {
    // Right after a start or resume the host has no sample yet (503): wait.
    if (!error || (error instanceof ApiError && error.status === 503)) return <Spinner label="Waiting for the first sample…" />;
    return <ErrorBox error={error} />;
  }
  const h = history.current;
  return (
    <div className="metrics">
      <Meter
        label="CPU"
        pct={latest.cpu_used_pct}
        text={`${latest.cpu_used_pct.toFixed(1)}% of ${latest.cpu_count} vCPU`}
        series={h.cpu}
      />
      <Meter
        label="Memory"
        pct={latest.mem_total_mib ? (100 * latest.mem_used_mib) / latest.mem_total_mib : 0}
        text={`${latest.mem_used_mib} / ${latest.mem_total_mib} MiB`}
        series={h.mem}
      />
      <Meter
        label="Disk"
        pct={latest.disk_total_mib ? (100 * latest.disk_used_mib) / latest.disk_total_mib : 0}
        text={`${latest.disk_used_mib} / ${latest.disk_total_mib} MiB`}
      />
      <p className="muted small">Sampled {dateTime(latest.sampled_at)}</p>
      <ErrorBox error={error} />
    </div>
  );
}

function Meter({ label, pct, text, series }: { label: string; pct: number; text: string; series?: number[] }) {
  const clamped = Math.max(0, Math.min(100, pct));
  return (
    <div className="meter" data-metric={label.toLowerCase()}>
      <div className="meter-head">
        <span>{label}</span>
        <span className="muted">{text}</span>
      </div>
      <div className="meter-bar" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(clamped)}>
        <div className={`meter-fill${clamped > 85 ? ' hot' : ''}`} style={{ width: `${clamped}%` }} />
      </div>
      {series && series.length >= 5 && <Sparkline values={series} />}
    </div>
  );
}

function Sparkline({ values }: { values: number[] }) {
  const w = 240;
  const hgt = 36;
  const step = w / (HISTORY - 1);
  const start = w - step * (values.length - 1);
  const pts = values
    .map((v, i) => `${(start + i * step).toFixed(1)},${(hgt - (Math.max(0, Math.min(100, v)) / 100) * (hgt - 2) - 1).toFixed(1)}`)
    .join(' ');
  return (
    <svg className="sparkline" viewBox={`0 0 ${w} ${hgt}`} preserveAspectRatio="none" aria-hidden="true">
      <polyline points={pts} fill="none" strokeWidth="1.5" vectorEffect="non-scaling-stroke" />
    </svg>
  );
}
