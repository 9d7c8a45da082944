// Parse docker-compose.yml files with balena's own compose parser (@balena/compose, as balena-cli 18 used it).
const fs = require('fs');
const yaml = require('js-yaml');
const { parse } = require('@balena/compose');
try {
  const raw = yaml.load(fs.readFileSync(process.argv[2], 'utf8'));
  const c = parse.normalize(raw);
  process.stdout.write(JSON.stringify(c, null, 1));
} catch (e) {
  process.stderr.write(`${e.name}: ${e.message}\n`);
  process.exit(1);
}
