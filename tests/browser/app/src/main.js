import { message } from './message.js';

const heading = document.getElementById('message');
heading.textContent = message;

// The API call the app makes: a route that needs the `reports` feature.
// Exposed so the check can repeat it after a plan switch without a reload.
window.loadReport = async () => {
  const response = await fetch('/api/reports/q3.json');
  const result = {
    status: response.status,
    contentType: response.headers.get('content-type'),
    body: await response.text(),
  };
  document.getElementById('report').textContent = `${result.status}`;
  return result;
};
window.loadReport();

// Accept the new module in place: a hot update, not a page reload.
if (import.meta.hot) {
  import.meta.hot.accept('./message.js', (next) => {
    heading.textContent = next.message;
  });
}
