// A JavaScript tool for the `javascript` runtime: {command, parameters} on stdin, one JSON value on stdout.
let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => {
  const { command, parameters } = JSON.parse(input);
  const reply = (value) => console.log(JSON.stringify(value));
  switch (command) {
    case 'count':
      return reply(parameters.text.split(/\s+/).filter(Boolean).length);
    case 'reverse':
      return reply([...parameters.text].reverse().join(''));
    default:
      return reply({ status: 'error', error: `unknown command ${command}` });
  }
});
