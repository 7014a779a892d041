/**
 * `{{name}}` substitution, used for machine-folder `*.tmpl` files and iPXE script templates.
 * A name the template uses but the caller did not define is an error naming the template,
 * the line and the names that are defined: a silent empty string would boot a broken machine.
 */
export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateError';
  }
}

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}/g;

export function renderTemplate(text: string, vars: Record<string, string | number | boolean>, templateName: string): string {
  return text.replace(PLACEHOLDER, (_match, name: string, offset: number) => {
    const value = Object.hasOwn(vars, name) ? vars[name] : undefined;
    if (value === undefined) {
      const line = text.slice(0, offset).split('\n').length;
      const known = Object.keys(vars).sort().join(', ');
      throw new TemplateError(`${templateName}:${line}: {{${name}}} is not defined (defined: ${known})`);
    }
    return String(value);
  });
}
