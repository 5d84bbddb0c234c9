// The app shell: the sign-in gate, the top bar and the routes.
import { useEffect, useState } from 'react';
import { getSession, onSessionChange, signOut } from './api';
import { Link, match, navigate, useLocation } from './router';
import { Notices } from './components/ui';
import { SignIn } from './pages/SignIn';
import { SandboxesPage } from './pages/Sandboxes';
import { SandboxPage } from './pages/Sandbox';
import { TemplatesPage } from './pages/Templates';
import { ApiKeysPage } from './pages/ApiKeys';

function useSession() {
  const [session, setSession] = useState(getSession);
  useEffect(() => onSessionChange(() => setSession(getSession())), []);
  return session;
}

export function App() {
  const session = useSession();
  const loc = useLocation();

  useEffect(() => {
    if (session && (loc.path === '/' || loc.path === '/login')) navigate('/sandboxes', { replace: true });
  }, [session, loc.path]);

  if (!session) return <SignIn />;

  let page;
  let params;
  if ((params = match('/sandboxes/:id', loc.path))) page = <SandboxPage key={params.id} id={params.id} />;
  else if (match('/sandboxes', loc.path)) page = <SandboxesPage />;
  else if (match('/templates', loc.path)) page = <TemplatesPage />;
  else if (match('/keys', loc.path)) page = <ApiKeysPage />;
  else if (loc.path === '/' || loc.path === '/login') page = null;
  else
    page = (
      <div className="empty">
        <h1>Not found</h1>
        <p>
          There is no page at <code>{loc.path}</code>. <Link href="/sandboxes">Go to sandboxes</Link>.
        </p>
      </div>
    );

  const section = loc.path.split('/')[1] || 'sandboxes';
  return (
    <div className="app">
      <header className="topbar">
        <Link href="/sandboxes" className="brand" aria-label="Wrenn home">
          <span className="brand-mark" aria-hidden="true">
            W
          </span>
          <span className="brand-name">Wrenn</span>
        </Link>
        <nav className="nav" aria-label="Main">
          <Link href="/sandboxes" className={section === 'sandboxes' ? 'active' : ''}>
            Sandboxes
          </Link>
          <Link href="/templates" className={section === 'templates' ? 'active' : ''}>
            Templates
          </Link>
          <Link href="/keys" className={section === 'keys' ? 'active' : ''}>
            API keys
          </Link>
          <a href="/docs/" target="_blank" rel="noreferrer">
            API docs
          </a>
        </nav>
        <div className="account">
          <span className="account-email" title={session.email}>
            {session.email}
          </span>
          <button className="btn btn-ghost btn-small" onClick={() => signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <main className="main">{page}</main>
      <Notices />
    </div>
  );
}
